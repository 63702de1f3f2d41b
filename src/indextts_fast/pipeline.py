"""The engine: load a model folder once, then synthesise text in a voice, stage by stage, timed.

    engine = Engine("checkpoints/")                      # or Engine(folder, device="cuda", threads=2)
    fast = Engine("checkpoints/", precision="auto")      # or "int8max", "bf16", {"gpt": "int8", "s2mel": "bf16"}
    result = engine.synthesize("Hello there.", voice="me.wav", preset="aggressive", seed=1)
    result.save("out.wav"); print(result.timings.table())
    for chunk in engine.stream("A long text...", voice="me.wav", seed=1):   # audio per segment, as it is ready
        play(chunk.audio)

Stages, as the official `infer_v2` runs them (SPEC-gpt.md, SPEC-s2mel.md): reference audio ->
speaker conditioning (w2v-bert features, semantic prompt, style, prompt mel, GPT speaker latent), cached
by audio content or by registered speaker_id; text -> segments; per segment: emotion vector, GPT codes
(gpt_gen), latents (gpt_forward), S2Mel (s2mel), BigVGAN (bigvgan); segments joined with silence.
Unlike the official code, the speaker latent and the emotion vector are computed once per request, not
once per segment (identical values), and the cache is keyed by content, not by path.

Precision (`precision=`, see plan.py) is an engine option, independent of presets: fp32 (default) is exact
parity; "auto" (the fastest modes this CPU runs natively), "bf16", "int8", ... or a per-stage mapping trade
measured fidelity (`indextts-fast fidelity`) for speed. It becomes one plan (`self.plan`), validated against
this CPU before anything loads (emulated modes refused unless `force_precision`), applied at load by
`precision.apply_plan`; bf16 stages run under bf16 autocast.

The stages themselves are stages.py's functions (one chain: parity, fidelity and the benches call them
too); this module adds what a request needs around them: conditioning caches (in memory, and the speaker
store on disk), emotion control, seeds, timing, streaming and assembly.

Flows: a request is `Engine.flow(...)`, a generator over its whole chain that yields the work it needs done
(a decoding.Search, a models.s2mel.Euler) and its AudioChunks; `stream`/`synthesize` run it alone
(`run_alone`), batcher.Batcher runs many flows together (continuous batching), with the same bits per request.

Threads: an Engine may be called from several threads at once. The models are only read during
inference; the shared caches, the extraction counter and the lazily loaded emotion classifier are guarded
by one lock, and the text front end (WeTextProcessing) runs under its own lock. Requests otherwise run in
parallel on torch's thread pool (a test checks that concurrent requests give the audio they give alone).
"""

from __future__ import annotations

import hashlib
import random
import threading
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from . import stages
from .config import ModelFolder
from .decoding import Search
from .errors import AudioError, OptionError
from .lru import LRU
from .models.s2mel import Euler
from .options import check_seed
from .presets import Settings, resolve
from .profiling import StageTimer
from .results import (PCM_SCALE, SAMPLE_RATE, AudioChunk, Emotion, SegmentResult,  # noqa: F401  (re-exported)
                      SpeakerConditioning, SynthesisResult)


def sha256_file(path: str | Path) -> str:
    """Content hash of an audio file (the cache key), or an AudioError when it does not exist."""
    from .speakers import sha256_of

    if not Path(path).is_file():
        raise AudioError(f"audio file not found: {path}")
    return sha256_of(path)


class Engine:
    """An IndexTTS2 model folder loaded once; `synthesize` and `stream` run requests against it."""

    def __init__(self, model_dir: str | Path | ModelFolder, device: str = "cpu", threads: Optional[int] = None,
                 store=None, cache_size: int = 16, precision=None, force_precision: bool = False):
        from .plan import make_plan

        if threads is not None:
            if threads < 1:
                raise OptionError(f"threads={threads} must be >= 1")
            torch.set_num_threads(threads)
        # validated first, against this machine: a mode it can only emulate is refused unless forced
        self.plan = make_plan(precision, device=str(device), force=force_precision)
        self.precision = self.plan.as_dict()  # {stage: fp32|bf16|int8|int8dyn}
        self.models = stages.load(model_dir, device, self.plan)
        self.store = store
        self.fingerprint = self.folder.fingerprint()
        # Registry entries and the clip cache are keyed by model AND conditioning precision: fp32 entries stay
        # exact, and an entry extracted at another precision is refused (re-register), never silently used.
        cond = self.precision["conditioning"]
        self._cache_fingerprint = self.fingerprint if cond == "fp32" else f"{self.fingerprint}+conditioning-{cond}"
        self._lock = threading.RLock()            # the caches below, the counter, the classifier
        self._text_lock = threading.Lock()        # the text front end
        self._speakers = LRU(cache_size)  # audio content hash -> SpeakerConditioning
        self._emotions = LRU(cache_size)  # content hash -> emo_cond_emb
        self._default_emovecs = LRU(cache_size)  # hash of a speaker's features -> its own-emotion emovec
        self._emotion_text = None  # the emotion classifier, loaded on first use
        self.extractions = 0  # how many times reference features were extracted (tests read it)

    # the loaded models (stages.Models), by their old names
    folder = property(lambda self: self.models.folder)
    device = property(lambda self: self.models.device)
    text = property(lambda self: self.models.text)
    gpt = property(lambda self: self.models.gpt)
    emotions = property(lambda self: self.models.emotions)
    w2v = property(lambda self: self.models.w2v)
    codec = property(lambda self: self.models.codec)
    campplus = property(lambda self: self.models.campplus)
    s2mel = property(lambda self: self.models.s2mel)
    vocoder = property(lambda self: self.models.vocoder)

    # ---- reference audio -------------------------------------------------------------------------
    def extract_speaker(self, audio_path: str | Path) -> SpeakerConditioning:
        """Run the whole reference-audio stage on a clip (no cache); float outputs are fp32 in every mode."""
        with self._lock:
            self.extractions += 1
        return stages.speaker_conditioning(self.models, audio_path)

    def speaker(self, voice: str | Path | None = None, speaker_id: Optional[str] = None,
                timer: Optional[StageTimer] = None) -> SpeakerConditioning:
        """Speaker conditioning of an audio file (cached by content hash, in memory and in the store)
        or of a registered speaker_id (memory, then the store; never re-extracted)."""
        if (voice is None) == (speaker_id is None):
            raise OptionError("give exactly one of a voice audio file or a registered speaker_id")
        if speaker_id is not None:
            # The store keeps its own bounded memory LRU and notices overwrites by other processes.
            if self.store is None:
                raise OptionError(f"speaker {speaker_id!r}: this engine has no speaker store")
            cond = SpeakerConditioning.from_tensors(self.store.get(speaker_id, self._cache_fingerprint), self.device)
            if timer:
                timer.timings.speaker_cache = "hit"
            return cond
        digest = sha256_file(voice)
        with self._lock:
            cond = self._speakers.get_fresh(digest)
        if cond is None and self.store is not None:
            cached = self.store.cache_get(digest, self._cache_fingerprint)
            cond = SpeakerConditioning.from_tensors(cached, self.device) if cached is not None else None
        hit = cond is not None
        if cond is None:
            cond = self.extract_speaker(voice)
            if self.store is not None:
                self.store.cache_put(digest, self._cache_fingerprint, cond.tensors())
        with self._lock:
            self._speakers.put(digest, cond)
        if timer:
            timer.timings.speaker_cache = "hit" if hit else "miss"
        return cond

    def register_speaker(self, speaker_id: str, audio_path: str | Path, overwrite: bool = False):
        """Extract a clip's conditioning once and store it under speaker_id (disk and memory)."""
        if self.store is None:
            raise OptionError("this engine has no speaker store to register into")
        digest = sha256_file(audio_path)
        cond = self.extract_speaker(audio_path)
        record = self.store.put(speaker_id, cond.tensors(), audio_sha256=digest,
                                model_fingerprint=self._cache_fingerprint, source=str(audio_path), overwrite=overwrite,
                                duration_s=cond.ref_mel.shape[-1] * 256 / SAMPLE_RATE)
        return record

    @torch.inference_mode()
    def emotion_features(self, audio_path: str | Path) -> torch.Tensor:
        from . import audio

        digest = sha256_file(audio_path)
        with self._lock:
            emb = self._emotions.get_fresh(digest)
        if emb is None:
            with self.models.autocast("conditioning"):
                emb = self.w2v(audio.load_emotion_audio(audio_path).to(self.device)).float()
            with self._lock:
                self._emotions.put(digest, emb)
        return emb

    @torch.inference_mode()
    def emotion_vector(self, spk: SpeakerConditioning, emotion: Emotion, text: str = "",
                       seed: int = 0) -> torch.Tensor:
        """The (1, D) emotion vector added to the GPT conditioning (SPEC-gpt.md section 5); `text` is
        what emotion-from-text reads when the request gives no emotion text of its own. The emotion
        encoders run at the conditioning precision; the result is fp32."""
        from .emotion import emovec_from_weights

        weights = list(emotion.vector) if emotion.vector is not None else None
        if emotion.from_text:
            with self._lock:
                if self._emotion_text is None:
                    from .emotion_text import EmotionTextModel

                    self._emotion_text = EmotionTextModel.from_folder(self.folder, str(self.device))
                weights = self._emotion_text.weights(emotion.text or text)
        emo_cond_emb = self.emotion_features(emotion.audio) if weights is None and emotion.audio is not None else None
        with self.models.autocast("conditioning"):
            if weights is not None:
                rng = random.Random(seed) if emotion.use_random else None
                mat, total = emovec_from_weights(weights, spk.style, self.emotions, emotion.alpha,
                                                 emotion.use_random, rng)
                base = self.gpt.merge_emovec(spk.spk_cond_emb, spk.emo_cond_emb, 1.0).float()
                return mat + (1.0 - total) * base
            if emo_cond_emb is not None:
                return self.gpt.merge_emovec(spk.spk_cond_emb, emo_cond_emb, emotion.alpha).float()
            return self._default_emovec(spk)

    def _default_emovec(self, spk: SpeakerConditioning) -> torch.Tensor:
        """The speaker's own emotion (no emotion given): a pure function of its features, so it is computed
        once per speaker and kept with the other cached conditioning (same values, two emotion-encoder
        passes saved per request)."""
        h = hashlib.sha256()
        for t in (spk.spk_cond_emb, spk.emo_cond_emb):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
        key = h.hexdigest()
        with self._lock:
            emovec = self._default_emovecs.get_fresh(key)
        if emovec is None:
            emovec = self.gpt.merge_emovec(spk.spk_cond_emb, spk.emo_cond_emb, 1.0).float()
            with self._lock:
                self._default_emovecs.put(key, emovec)
        return emovec

    # ---- synthesis -------------------------------------------------------------------------------
    def synthesize(self, text: str, voice: str | Path | None = None, speaker_id: Optional[str] = None,
                   emotion: Optional[Emotion] = None, preset: str = "baseline", settings: Optional[Settings] = None,
                   seed: Optional[int] = None, profile: bool = False, forced_codes: Optional[int] = None,
                   noise: Optional[Sequence[torch.Tensor]] = None, first_segment_tokens: int = 0,
                   **overrides) -> SynthesisResult:
        """Speak `text` in a voice (audio file) or a registered speaker_id.

        preset + overrides (any `Settings` field) or a ready `settings`; `seed` makes the result
        deterministic (drawn and reported when None); `profile` synchronises the device at stage
        boundaries. `forced_codes` makes every segment generate exactly that many codes (the stop code
        is suppressed; for timing random-weight models, which never stop). `noise` injects each
        segment's CFM starting noise (1, 80, T_ref + T_target) (parity with the official goldens).
        """
        request = self._request(text, voice, speaker_id, emotion, preset, settings, seed, forced_codes, overrides,
                                first_segment_tokens)
        timer = StageTimer(self.device, synchronize=profile)
        chunks = list(run_alone(self.models, self._chunks(request, timer, noise)))
        audio = np.concatenate([c.audio for c in chunks])
        segments = [c.segment for c in chunks]
        timings = timer.finish(len(audio) / SAMPLE_RATE, sum(int(s.codes.shape[1]) for s in segments))
        return SynthesisResult(audio, SAMPLE_RATE, timings, request["settings"], request["seed"], segments)

    def stream(self, text: str, voice: str | Path | None = None, speaker_id: Optional[str] = None,
               emotion: Optional[Emotion] = None, preset: str = "baseline", settings: Optional[Settings] = None,
               seed: Optional[int] = None, forced_codes: Optional[int] = None,
               noise: Optional[Sequence[torch.Tensor]] = None, first_segment_tokens: int = 0,
               **overrides) -> Iterator[AudioChunk]:
        """`synthesize`, one `AudioChunk` per segment as soon as it is ready (the silence between segments
        leads every chunk after the first): the chunks' audio, concatenated, is `synthesize`'s for the same
        seed. `first_segment_tokens` > 0 keeps the first segment that short, so the first chunk comes sooner
        (the official quick_streaming_tokens). Everything the request names is checked here, before the first
        chunk is asked for."""
        return run_alone(self.models, self.flow(text, voice, speaker_id, emotion, preset, settings, seed, forced_codes,
                                                noise, first_segment_tokens, **overrides))

    def flow(self, text: str, voice: str | Path | None = None, speaker_id: Optional[str] = None,
             emotion: Optional[Emotion] = None, preset: str = "baseline", settings: Optional[Settings] = None,
             seed: Optional[int] = None, forced_codes: Optional[int] = None,
             noise: Optional[Sequence[torch.Tensor]] = None, first_segment_tokens: int = 0,
             **overrides):
        """`stream`'s request as a flow (a generator): it yields the work it needs done, a decoding.Search
        (run it to its end) or a models.s2mel.Euler (step it until done), and its `AudioChunk`s. `stream`
        runs it alone (`run_alone`); batcher.Batcher runs many at once, stepping their searches together and
        their flows in turns. Arguments are checked here, before the flow starts."""
        request = self._request(text, voice, speaker_id, emotion, preset, settings, seed, forced_codes, overrides,
                                first_segment_tokens)
        return self._chunks(request, StageTimer(self.device, synchronize=False), noise)

    def _request(self, text, voice, speaker_id, emotion, preset, settings, seed, forced_codes, overrides,
                 first_segment_tokens: int = 0) -> dict:
        if not isinstance(text, str):
            raise OptionError(f"text must be a str, got {type(text).__name__}")
        if not text.strip():
            raise OptionError("text is empty: give something to say")
        if seed is not None:
            check_seed(seed)
        if (voice is None) == (speaker_id is None):
            raise OptionError("give exactly one of a voice audio file or a registered speaker_id")
        if forced_codes is not None and forced_codes < 1:
            raise OptionError(f"forced_codes={forced_codes} must be >= 1")
        if isinstance(first_segment_tokens, bool) or not isinstance(first_segment_tokens, int) or first_segment_tokens < 0:
            raise OptionError(f"first_segment_tokens={first_segment_tokens!r} must be an integer >= 0")
        settings = settings.overridden(**overrides) if settings is not None else resolve(preset, overrides)
        return {"text": text, "voice": voice, "speaker_id": speaker_id, "emotion": emotion or Emotion(),
                "first_segment_tokens": first_segment_tokens,
                "settings": settings, "forced_codes": forced_codes,
                "seed": random.randrange(2**31) if seed is None else int(seed)}

    def _chunks(self, r: dict, timer: StageTimer, noise) -> Iterator[AudioChunk]:
        settings, seed = r["settings"], r["seed"]
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with timer.stage("text"), self._text_lock:
            segments = stages.text_segments(self.models, r["text"], settings.max_text_tokens_per_segment,
                                            r["first_segment_tokens"])
        with timer.stage("speaker_cond"):
            spk = self.speaker(r["voice"], r["speaker_id"], timer)
        with timer.stage("emotion_cond"):
            emovec = self.emotion_vector(spk, r["emotion"], r["text"], seed)
        silence = np.zeros(int(SAMPLE_RATE * settings.interval_silence_ms / 1000), dtype=np.float32)
        cut = 0
        for k, ids in enumerate(segments):
            timer.new_segment()
            seg = yield from self._segment(spk, ids, emovec, settings, gen, timer, r["forced_codes"],
                                           noise[k] if noise is not None else None)
            cut += seg.hit_max_mel_tokens
            if cut and k == len(segments) - 1 and r["forced_codes"] is None:
                warnings.warn(f"generation stopped at max_mel_tokens ({settings.max_mel_tokens}) in {cut} segment(s): "
                              "the speech may be cut; lower max_text_tokens_per_segment or raise max_mel_tokens",
                              RuntimeWarning, stacklevel=3)
            audio = (seg.wav_pcm[0].cpu() / PCM_SCALE).clamp(-1.0, 1.0).numpy().astype(np.float32)
            seconds = dict(timer.timings.segments[-1])
            if k == 0:
                seconds.update({s: timer.timings.stages[s] for s in ("text", "speaker_cond", "emotion_cond")})
            yield AudioChunk(k, len(segments), np.concatenate([silence, audio]) if k else audio, SAMPLE_RATE, seed, seg,
                             seconds)

    def _segment(self, spk: SpeakerConditioning, ids: list[int], emovec: torch.Tensor, settings: Settings,
                 gen: torch.Generator, timer: StageTimer, forced_codes: Optional[int],
                 noise: Optional[torch.Tensor]):
        """One segment's stages, as a flow: yields its search and its flow matching, returns a SegmentResult."""
        m = self.models
        with timer.stage("gpt_gen"):
            search = stages.code_search(m, spk, ids, emovec, settings.decoding(forced_codes), gen)
            yield search                                    # run to its end by the driver (alone or batched)
            codes, hit_max = stages.search_codes(m, search)
        with timer.stage("gpt_forward"):
            latent = stages.gpt_latents(m, spk, ids, codes, emovec)
        with timer.stage("s2mel"):
            cond = stages.semantic_condition(m, codes, latent)
            euler = stages.s2mel_begin(m, spk, cond, settings.diffusion_steps, settings.cfg_rate, gen, noise)
            yield euler                                     # stepped by the driver until done
            mel = stages.s2mel_mel(spk, euler)
        with timer.stage("bigvgan"):
            wav_pcm = stages.vocode(m, mel)
        return SegmentResult(ids, codes, hit_max, wav_pcm)

    def clear_caches(self) -> None:
        """Forget cached conditioning in memory (the store on disk is untouched)."""
        with self._lock:
            self._speakers.clear()
            self._emotions.clear()
            self._default_emovecs.clear()


def run_alone(m: stages.Models, flow) -> Iterator[AudioChunk]:
    """Drive one request's flow (`Engine.flow`) by itself: each search and each flow matching run to its end
    as it comes; the flow's AudioChunks are yielded."""
    reply = None
    while True:
        try:
            item = flow.send(reply)
        except StopIteration:
            return
        if isinstance(item, AudioChunk):
            yield item
        elif isinstance(item, Euler):
            while not item.done:
                stages.s2mel_step(m, item)
        elif isinstance(item, Search):
            stages.run_search(m, item)
        else:
            raise TypeError(f"a flow yielded {type(item).__name__}")
