"""Autoregressive generation of mel codes with the IndexTTS2 GPT: our own loop over an explicit KV cache.

Reproduces the official `inference_speech` + vendored HF `generate` (transformers 4.52.1) decisions
(SPEC-gpt.md §8-§10): greedy, sampling, beam search and beam sampling (infer_v2's default), the logits
processors in the official order, the beam scorer, stop/padding handling and infer_v2's stop-code trimming.
Output-shaping official quirks are reproduced and named where they happen ("Official quirk").

Speed (gpt-fast style): `prefill` and `decode_step` are separate functions; the prompt is run once with
batch 1 and its keys/values are shared by all beams; generated keys/values are never copied when beams are
reordered (each row keeps the list of cache slots of its ancestry, see `KVCache`; each row attends its prompt
and its own ancestry only).

Continuous batching: a generation is a `Search` (`SampleSearch`, `BeamSearch`) advanced one step at a time;
`step_all(model, searches)` runs one decode step of any number of searches in ONE model call (`forward_rows`:
every request's rows through the projections together, each request's attention on its own cache), each keeping
its own options and generator. `batch_rows(model)` says how many rows a call may hold with every row's result
independent of the others (the precision plan's row kernels), so a request decodes the same bits alone or in
any batch. `generate` is one search run alone through `step_all`.

Public API:
- `DecodingOptions(...)`: one validated, immutable set of options (defaults = infer_v2's).
- `generate(model, spk_latent, text_ids, emovec, options, generator=None) -> Generation`
- `search(...) -> Search` (checked, not started), `Search.start()`, `step_all(model, searches)`
- `trim_codes(codes, stop_token) -> (codes, code_lens, hit_max_tokens)`
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import OptionError
from .options import DecodingOptions  # noqa: F401  (re-exported)
from .kernels import ops
from .sampling import multinomial, process_scores
from .models.gpt import UnifiedVoice, check_conditioning, check_ids, merge_heads, split_heads


class MaxMelTokensWarning(RuntimeWarning):
    """Generation was cut at `max_mel_tokens` before a stop code (infer_v2 warns the same way)."""


# ---- KV cache, prefill and decode step ---------------------------------------------------------------

class KVCache:
    """Keys/values of one generation in one buffer per layer: the prompt part, then the generated part.

    - prompt: the P + 1 prompt positions (conditioning, text, start code), computed once with batch 1 and
      shared by every row (all beams start from the same prompt); left-padded positions are never attended.
    - generated: at generation step t each of the S rows writes its key/value to slot P+1 + t·S + row. A
      row's history is the list `slots[row, :t+1]` of the slots of its ancestors, so reordering beams only
      reorders these small index lists, never the cached tensors.
    A decode step attends with the S rows as S queries of one sequence over the whole buffer, each with a
    boolean mask of its own prompt + ancestry slots: one attention call per layer, every cached key and
    value read once whatever the number of beams, no copies.
    """

    def __init__(self, model: UnifiedVoice, rows: int, capacity: int):
        blocks = model.gpt.h
        attn = blocks[0].attn
        p = model.mel_embedding.weight
        self.layers, self.heads, self.head_dim = len(blocks), attn.heads, attn.head_dim
        # Keys/values are stored in the residual stream's dtype, or in the one a reduced-precision GPT asks
        # for (precision.convert_gpt_ sets bf16: half the bytes a decode step reads besides the weights).
        self.rows, self.dtype, self.device = rows, getattr(model, "kv_dtype", p.dtype), p.device
        self.kernel = _attention_kernel(self)   # whether the C attention reads this bf16 cache (else SDPA)
        self.steps_wanted = max(1, capacity)
        self.prefix = 0                        # P + 1 once prefilled
        self.prefix_valid: Optional[torch.Tensor] = None      # (P+1,) bool, None when nothing is padded
        self.prompt_keys: Optional[torch.Tensor] = None       # the valid prompt positions (int32)
        self.capacity = 0                      # generated steps the buffers hold
        self.length = 0                        # generated steps stored
        self.mask: Optional[torch.Tensor] = None               # (S, keys) for the current step (SDPA)
        self.keys: Optional[torch.Tensor] = None               # (S, L) int32 positions each row attends (kernels)
        self.n_keys = 0                                        # L (every row attends as many positions)

    def _allocate(self, capacity: int) -> None:
        size = self.prefix + capacity * self.rows
        shape = (self.layers, self.heads, size, self.head_dim)
        k = torch.empty(shape, dtype=self.dtype, device=self.device)
        v = torch.empty(shape, dtype=self.dtype, device=self.device)
        slots = torch.empty(self.rows, capacity, dtype=torch.long, device=self.device)
        if self.capacity:
            used = self.prefix + self.length * self.rows
            k[:, :, :used], v[:, :, :used] = self.k[:, :, :used], self.v[:, :, :used]
            slots[:, :self.length] = self.slots[:, :self.length]
        self.k, self.v, self.slots, self.capacity = k, v, slots, capacity

    def start(self, prefix_valid: torch.Tensor) -> None:
        """Size the buffers for a prompt of len(prefix_valid) positions (False = left padding)."""
        self.prefix = prefix_valid.shape[0]
        self.prefix_valid = None if bool(prefix_valid.all()) else prefix_valid
        prompt = torch.arange(self.prefix, device=self.device, dtype=torch.int32)   # every row's first keys
        self.prompt_keys = prompt if self.prefix_valid is None else prompt[self.prefix_valid]
        self._allocate(min(self.steps_wanted, 256))

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues the history of row rows[i] (beam search)."""
        self.slots[:, :self.length] = self.slots[rows, :self.length]

    # -- attention callables for the backbone (GPT2Backbone.forward(x, attend)) --
    def attend_prefill(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = split_heads(qkv, self.heads)
        self.k[layer, :, :self.prefix] = k[0]
        self.v[layer, :, :self.prefix] = v[0]
        return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.mask is None))

    def attend_step(self, layer: int, qkv: torch.Tensor) -> torch.Tensor:
        """One position per row: qkv (S, 3D) -> (S, D). The S rows are S queries of one sequence."""
        s = self.rows
        q, k, v = qkv.view(s, 3, self.heads, self.head_dim).unbind(1)          # (S, H, d) each
        lo = self.prefix + self.length * s
        self.k[layer, :, lo:lo + s] = k.transpose(0, 1)
        self.v[layer, :, lo:lo + s] = v.transpose(0, 1)
        end = lo + s
        out = ops.attend_bf16(qkv, self.k[layer], self.v[layer], self.n_keys, self.keys, self.heads, self.head_dim) \
            if self.kernel else None
        if out is not None:
            return out
        out = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0).to(self.dtype),
                                             self.k[layer, None, :, :end], self.v[layer, None, :, :end],
                                             attn_mask=self.step_mask())            # (1, H, S, d)
        return out[0].transpose(0, 1).reshape(s, -1).to(qkv.dtype)

    def begin_step(self) -> None:
        if self.length == self.capacity:   # grow (doubling, up to the steps the generation can need)
            self._allocate(max(self.capacity + 1, min(2 * self.capacity, self.steps_wanted)))
        t, s = self.length, self.rows
        self.slots[:, t] = t * s + torch.arange(s, device=self.device)
        if s == 1 and self.prefix_valid is None:
            self.mask, self.keys, self.n_keys = None, None, self.prefix + t + 1   # one row sees every position
            return
        # each row: the valid prompt positions, then its own ancestry (cache order): the kernels' key lists
        self.keys = torch.cat((self.prompt_keys.expand(s, -1), self.prefix + self.slots[:, :t + 1].int()), dim=1)
        self.n_keys = self.keys.shape[1]
        self.mask = None   # made by step_mask() when SDPA needs it (the kernels read the key lists)

    def step_mask(self) -> Optional[torch.Tensor]:
        """This step's keys as SDPA's additive (S, positions) mask (0 / -inf) in the cache dtype, made once per
        step (SDPA would otherwise derive it from a boolean mask in every layer); None: every position."""
        if self.mask is None and self.keys is not None:
            s = self.rows
            allowed = torch.zeros(s, self.prefix + (self.length + 1) * s, dtype=torch.bool, device=self.device)
            allowed.scatter_(1, self.keys.long(), True)
            self.mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(~allowed, -math.inf)
        return self.mask


def _attention_kernel(cache: KVCache) -> bool:
    """Whether kernels/native.c's attention reads this cache (kernels.ops.attend_bf16): bf16 on the CPU, the
    head width a multiple of 16, the AVX-512 library loaded."""
    from .kernels import load

    return cache.dtype == torch.bfloat16 and cache.device.type == "cpu" and cache.head_dim % 16 == 0 \
        and cache.head_dim <= 256 and load() is not None


def prefill(model: UnifiedVoice, prompt: torch.Tensor, valid: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run [prompt ; start code] (batch 1) through the model, fill the cache's prefix, return (1, V) logits.

    The start code 8192 is embedded with mel position 0.
    """
    cfg = model.cfg
    start = model.embed_mel(torch.tensor([cfg.start_mel_token], device=prompt.device),
                            torch.zeros(1, dtype=torch.long, device=prompt.device))
    x = torch.cat((prompt, start.unsqueeze(0)), dim=1)
    n = x.shape[1]
    keys = F.pad(valid, (0, 1), value=True)
    cache.start(keys)
    if cache.prefix_valid is None:
        cache.mask = None
    else:
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        # Padded positions are masked as keys; a padded query attends to itself only (its output is never
        # seen, this only keeps it finite).
        cache.mask = causal & (keys[None, :] | eye)
    hidden = model.gpt(x, cache.attend_prefill)
    return model.head(hidden[:, -1])


def decode_step(model: UnifiedVoice, cache: KVCache, tokens: torch.Tensor, position: int) -> torch.Tensor:
    """Feed one code per row (S,) at mel position `position`; return (S, V) logits."""
    return forward_rows(model, [cache], [model.embed_mel(tokens, torch.full_like(tokens, position))])


def forward_rows(model: UnifiedVoice, caches: list[KVCache], embedded: list[torch.Tensor]) -> torch.Tensor:
    """One decode step of one or more generations in ONE model call: `embedded[i]` (S_i, D) are the new
    positions of the generation whose cache is `caches[i]` -> their logits (ΣS_i, V), rows in that order.
    The projections run on all rows at once (every weight read once for all of them); each generation's
    attention reads only its own cache. A row's result does not depend on the other rows in the call where
    the projections are row-invariant (`batch_rows(model)` > 0; the fused int8 steps always are)."""
    x = embedded[0] if len(embedded) == 1 else torch.cat(embedded)
    for cache in caches:
        cache.begin_step()
    fused = getattr(model, "fused_decode", None)   # precision.fused_*_decode: all blocks in one kernel call
    hidden = fused(model, x, caches) if fused is not None else None
    if hidden is None:
        hidden = model.gpt(x, caches[0].attend_step if len(caches) == 1 else _attend_each(caches))
    for cache in caches:
        cache.length += 1
    return model.head(hidden)


def _attend_each(caches: list[KVCache]):
    """The backbone's attention callable for a step of several generations: each its rows, its cache."""
    def attend(layer: int, qkv: torch.Tensor) -> torch.Tensor:
        out, r = [], 0
        for cache in caches:
            out.append(cache.attend_step(layer, qkv[r:r + cache.rows]))
            r += cache.rows
        return torch.cat(out)
    return attend


def batch_rows(model: UnifiedVoice) -> int:
    """How many rows one batched decode step may hold with every row's result independent of the others:
    the smallest `batch_rows` of the GPT's projections (the precision plan's row kernels declare theirs;
    torch's own layers, whose GEMMs may sum a row differently by batch size, count 0: one generation per
    call)."""
    blocks = model.gpt.h
    layers = [m for b in blocks for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    return min(getattr(m, "batch_rows", 0) for m in [*layers, model.mel_head])


# ---- generation --------------------------------------------------------------------------------------

@dataclass
class Trace:
    """Per-step internals for parity checks: raw logits (rows, V) and, in beam modes, the ranked
    (score, token, beam) candidates handed to the beam scorer."""

    logits: list = field(default_factory=list)
    beam_scores: list = field(default_factory=list)
    beam_tokens: list = field(default_factory=list)
    beam_sources: list = field(default_factory=list)


@dataclass
class Generation:
    """codes: (num_return_sequences, n) int64 exactly as the official `inference_speech` returns them
    (a generated stop code and stop-code padding included; cut them with `trim_codes`).
    steps: model calls made (prefill included). trace: filled when generate(..., record=True)."""

    codes: torch.Tensor
    steps: int
    trace: Optional[Trace] = None


class _Hypotheses:
    """HF BeamHypotheses (early_stopping=False) for one batch row, with Python-float scores as HF has."""

    def __init__(self, num_beams: int, length_penalty: float):
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst_score = 1e9

    def add(self, hyp: torch.Tensor, sum_logprobs: float, generated_len: int) -> None:
        score = sum_logprobs / (generated_len ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, hyp))
            if len(self.beams) > self.num_beams:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, generated_len: int) -> bool:
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / generated_len ** self.length_penalty


def _history(seqs: torch.Tensor, cfg) -> torch.Tensor:
    # Official quirk (SPEC-gpt §15.5): the repetition penalty sees the whole input_ids row, i.e. the fake
    # prompt ids (all 1) and the start code 8192 before the generated codes, so mel codes 1 and 8192 are
    # always penalised. Each distinct id counts once, so [1, 8192, codes…] gives the identical result.
    fake = torch.tensor([1, cfg.start_mel_token], dtype=torch.long, device=seqs.device)
    return torch.cat((fake.expand(seqs.shape[0], 2), seqs), dim=1)


class Search:
    """One generation advanced one decode step at a time: `start()` runs the prefill, then every call of
    `step_all([...])` (alone, or with other generations' searches in the same model call: continuous
    batching) feeds its pending codes and takes the next logits, until `done`. Each search keeps its own
    options, random generator, KV cache and trace; `codes` is the result."""

    rows: int
    text_tokens: int = 0      # the segment's text length (warn_if_cut's message)

    def __init__(self, model: UnifiedVoice, prompt: torch.Tensor, valid: torch.Tensor, options: DecodingOptions,
                 generator: Optional[torch.Generator], trace: Optional[Trace]):
        self.model, self.options, self.generator, self.trace = model, options, generator, trace
        self.prompt, self.valid = prompt, valid
        self.cache = KVCache(model, self.rows, options.max_mel_tokens)
        # the ids the repetition penalty sees: [1, 8192, codes…] (see _history), the codes a view of it
        self.history = _history(torch.empty(self.rows, 0, dtype=torch.long, device=prompt.device), model.cfg)
        self.step = 0            # logits consumed = codes generated per row
        self.steps = 0           # model calls (prefill included)
        self.tokens: Optional[torch.Tensor] = None   # the codes to feed next (rows,)
        self.done = False
        self.codes: Optional[torch.Tensor] = None

    @property
    def seqs(self) -> torch.Tensor:
        """The codes generated so far, (rows, step)."""
        return self.history[:, 2:]

    def start(self) -> None:
        """The prefill (batch 1, this generation alone) and the first choice of codes."""
        logits = prefill(self.model, self.prompt, self.valid, self.cache).expand(self.rows, -1)
        self.steps = 1
        self.prompt = self.valid = None
        self._take(logits)

    def embedded(self) -> torch.Tensor:
        # Official quirk (SPEC-gpt §15.4/§8.3): with the KV cache the k-th generated code is embedded with mel
        # position k + 1 (2, 3, …; position 1 is never used), not k.
        return self.model.embed_mel(self.tokens, torch.full_like(self.tokens, self.step + 1))

    def _take(self, logits: torch.Tensor) -> None:
        if self.trace is not None:
            self.trace.logits.append(logits.float().clone())
        self.tokens = self.choose(logits)
        self.step += 1
        if self.tokens is None:
            self.done, self.cache = True, None     # the cache is freed as soon as the generation ends

    def choose(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        """Take step `self.step`'s logits (rows, V) -> the codes to feed next, or None when finished."""
        raise NotImplementedError


def step_all(model: UnifiedVoice, searches: list[Search]) -> None:
    """One decode step of every search given (each started, not done) in one model call."""
    logits = forward_rows(model, [s.cache for s in searches], [s.embedded() for s in searches])
    r = 0
    for s in searches:
        s.steps += 1
        s._take(logits[r:r + s.rows])
        r += s.rows


class SampleSearch(Search):
    """Greedy or multinomial sampling, num_return_sequences rows (HF `_sample`)."""

    def __init__(self, model, prompt, valid, options, generator, trace):
        self.rows = options.num_return_sequences
        super().__init__(model, prompt, valid, options, generator, trace)
        self.unfinished = torch.ones(self.rows, dtype=torch.bool, device=prompt.device)

    def choose(self, logits):
        o, cfg = self.options, self.model.cfg
        stop = cfg.stop_mel_token
        scores = process_scores(logits.float(), self.history, o, self.step, stop)
        if o.do_sample:
            tokens = multinomial(torch.softmax(scores, dim=-1), 1, self.generator).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        tokens = torch.where(self.unfinished, tokens, stop)        # finished rows receive the pad code 8193
        self.history = torch.cat((self.history, tokens[:, None]), dim=1)
        self.unfinished &= tokens != stop
        if not bool(self.unfinished.any()) or self.seqs.shape[1] == o.max_mel_tokens:
            self.codes = self.seqs.contiguous()
            return None
        return tokens


class BeamSearch(Search):
    """Beam search and beam sampling (HF `_beam_search` / `_beam_sample` with its BeamSearchScorer)."""

    def __init__(self, model, prompt, valid, options, generator, trace):
        self.rows = options.num_beams
        super().__init__(model, prompt, valid, options, generator, trace)
        self.beam_scores = torch.full((self.rows,), -1e9, dtype=torch.float32, device=prompt.device)
        self.beam_scores[0] = 0.0     # every beam starts from the same prompt: only the first one counts
        self.hyps = _Hypotheses(self.rows, options.length_penalty)

    def choose(self, logits):
        o, nb, step = self.options, self.rows, self.step
        stop, vocab, trace = self.model.cfg.stop_mel_token, self.model.cfg.number_mel_codes, self.trace
        # Official quirk (SPEC-gpt §15.6): in beam modes the processors act on log-probabilities (the
        # penalty always multiplies, the temperature divides log-probs); length_penalty 0 = no normalisation.
        scores = torch.log_softmax(logits.float(), dim=-1)
        scores = process_scores(scores, self.history, o, step, stop)
        flat = (scores + self.beam_scores[:, None]).view(1, nb * vocab)
        n_candidates = 2 * nb                      # HF: max(2, 1 + number of stop ids) · num_beams
        if o.do_sample:
            picked = multinomial(torch.softmax(flat, dim=-1), n_candidates, self.generator)
            cand, order = torch.sort(flat.gather(1, picked), descending=True, dim=1)
            picked = picked.gather(1, order)
        else:
            cand, picked = torch.topk(flat, n_candidates, dim=1, largest=True, sorted=True)
        sources, tokens = (picked // vocab)[0].tolist(), (picked % vocab)[0].tolist()
        cand_list = cand[0].tolist()
        if trace is not None:
            trace.beam_scores.append(cand[0].clone())
            trace.beam_tokens.append((picked % vocab)[0].clone())
            trace.beam_sources.append((picked // vocab)[0].clone())
        next_scores, next_tokens, next_sources = [], [], []
        for rank, (score, token, source) in enumerate(zip(cand_list, tokens, sources)):
            if token == stop:
                if rank < nb:   # stop candidates ranked below num_beams are ignored
                    self.hyps.add(self.seqs[source].clone(), score, generated_len=step + 1)
            else:
                next_scores.append(score)
                next_tokens.append(token)
                next_sources.append(source)
            if len(next_tokens) == nb:
                break
        done = self.hyps.is_done(max(cand_list), step + 1)
        device = self.seqs.device
        rows = torch.tensor(next_sources, device=device)
        new_tokens = torch.tensor(next_tokens, dtype=torch.long, device=device)
        self.history = torch.cat((self.history[rows], new_tokens[:, None]), dim=1)
        self.beam_scores = torch.tensor(next_scores, dtype=torch.float32, device=device)
        if done or self.seqs.shape[1] == o.max_mel_tokens:
            self.codes = self._finish(done)
            return None
        self.cache.reorder(rows)
        return new_tokens

    def _finish(self, done: bool) -> torch.Tensor:
        o, stop, hyps = self.options, self.model.cfg.stop_mel_token, self.hyps
        if not done:  # cut by max_mel_tokens: every open beam is offered as a hypothesis too
            for i in range(self.rows):
                hyps.add(self.seqs[i].clone(), self.beam_scores[i].item(), generated_len=self.seqs.shape[1])
        ranked = sorted(hyps.beams, key=lambda h: h[0])
        best = [ranked.pop()[1] for _ in range(o.num_return_sequences)]
        # Finished hypotheses are stored without their stop code; every hypothesis shorter than the returned
        # width gets a stop code appended, the rest is stop-code padding (pad = stop = 8193).
        width = min(max(len(h) for h in best) + 1, o.max_mel_tokens)
        out = torch.full((len(best), width), stop, dtype=torch.long, device=self.seqs.device)
        for i, h in enumerate(best):
            out[i, :len(h)] = h
        return out


@torch.inference_mode()
def search(model: UnifiedVoice, spk_latent: torch.Tensor, text_ids: torch.Tensor, emovec: torch.Tensor,
           options: Optional[DecodingOptions] = None, generator: Optional[torch.Generator] = None,
           *, record: bool = False) -> Search:
    """A generation of mel codes for one text segment, checked and ready to `start()` (arguments as `generate`)."""
    options = DecodingOptions() if options is None else options
    if not isinstance(options, DecodingOptions):
        raise OptionError(f"options must be a DecodingOptions, got {type(options).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise OptionError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    cfg = model.cfg
    text_ids = check_ids(text_ids, "text_ids", cfg.number_text_tokens + 1, cfg.max_text_tokens)
    check_conditioning(model, spk_latent, emovec)
    limit = model.mel_pos_embedding.emb.num_embeddings - 2
    if options.max_mel_tokens > limit:
        raise OptionError(f"DecodingOptions.max_mel_tokens={options.max_mel_tokens} exceeds what the model's "
                          f"mel position table allows ({limit})")
    device = next(model.parameters()).device
    prompt, valid = model.prompt(spk_latent.to(device), text_ids.to(device), emovec.to(device))
    kind = BeamSearch if options.num_beams > 1 else SampleSearch
    s = kind(model, prompt, valid, options, generator, Trace() if record else None)
    s.text_tokens = int(text_ids.numel())
    return s


def warn_if_cut(s: Search) -> None:
    """infer_v2's warning when a returned sequence does not end with the stop code."""
    if bool((s.codes[:, -1] != s.model.cfg.stop_mel_token).any()):
        warnings.warn(f"generation stopped at max_mel_tokens={s.options.max_mel_tokens} before a stop code "
                      f"({s.text_tokens} text tokens): the speech of this segment is cut; use shorter "
                      f"segments or a larger max_mel_tokens", MaxMelTokensWarning, stacklevel=3)


@torch.inference_mode()
def generate(model: UnifiedVoice, spk_latent: torch.Tensor, text_ids: torch.Tensor, emovec: torch.Tensor,
             options: Optional[DecodingOptions] = None, generator: Optional[torch.Generator] = None,
             *, record: bool = False) -> Generation:
    """Generate mel codes for one text segment, as the official `inference_speech` does.

    spk_latent (1, 32, D) from `model.speaker_latent`; text_ids: 1-D integer tensor of BPE ids (no start/stop
    added: the model adds them); emovec (1, D); options: DecodingOptions (default: infer_v2's); generator:
    the torch.Generator every random draw uses (None = torch's global generator, like the official code).
    Warns MaxMelTokensWarning when a returned sequence does not end with the stop code. The same `Search`
    that continuous batching steps together with others (`step_all`), run alone.
    """
    s = search(model, spk_latent, text_ids, emovec, options, generator, record=record)
    s.start()
    while not s.done:
        step_all(model, [s])
    warn_if_cut(s)
    return Generation(s.codes, s.steps, s.trace)


def trim_codes(codes: torch.Tensor, stop_token: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """infer_v2's cut between the two GPT passes: code_len = index of the first stop code (or the full
    length); codes cut to the largest code_len. hit_max_tokens: some row's last code is not the stop code
    (infer_v2's max_mel_tokens warning condition)."""
    if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.is_floating_point() or codes.shape[1] == 0:
        got = f"{codes.dtype} {tuple(codes.shape)}" if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise OptionError(f"codes must be a non-empty 2-D integer tensor (rows, n), got {got}")
    is_stop = codes == stop_token
    first = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1), torch.full_like(codes[:, 0], codes.shape[1]))
    code_lens = first.long()
    return codes[:, :int(code_lens.max())], code_lens, bool((codes[:, -1] != stop_token).any())
