"""GPT-stage parity: every case of `goldens/gpt.json` against our UnifiedVoice and decoding (SPEC-gpt §14).

Case kinds are recognised by the part of the case id after its letter (`a_conditioning` -> conditioning);
tensor names, inputs, parameters and tolerances all come from the manifest, so any folder laid out like
`tiny/` (other seeds, sizes, the {'model': sd} checkpoint layout) is checked the same way.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ..plan import make_plan
from ..precision import apply_plan
from ..decoding import DecodingOptions, MaxMelTokensWarning, generate, trim_codes
from ..sampling import apply_repetition_penalty, apply_top_k, process_scores
from ..emotion import EmotionMatrices, emovec_from_weights
from ..models.gpt import load_gpt
from . import CaseResult, Goldens, check_fact, compare

STAGE = "gpt"


class _Case:
    def __init__(self, goldens: Goldens, case: dict):
        self.g, self.case = goldens, case
        self.id = case["id"]
        self.cases = {c["id"]: c for c in goldens.manifest["cases"]}
        self.checked: set[str] = set()

    def _input_spec(self, name: str, case: dict | None = None):
        case = case or self.case
        inputs = case.get("inputs", {})
        if name in inputs:
            return inputs[name]
        ref = inputs.get("same_as") or str(inputs.get("others", "")).removeprefix("as ").strip()
        if ref in self.cases and self.cases[ref] is not case:
            return self._input_spec(name, self.cases[ref])
        raise KeyError(f"case {self.id} has no input {name!r}")

    def input(self, name: str):
        spec = self._input_spec(name)
        if isinstance(spec, str):
            return self.g[spec]
        if isinstance(spec, dict) and "tensor" in spec:
            return self.g[spec["tensor"]]
        return spec

    def out(self, name: str) -> torch.Tensor:
        return self.g[self.case["outputs"][name]["tensor"]]

    def has(self, name: str) -> bool:
        return name in self.case.get("outputs", {})

    def tol(self, key: str, default=(0.0, 0.0)) -> tuple[float, float]:
        """(atol, rtol) of the tolerance entry named `key` (or starting with it)."""
        tolerance = self.case.get("tolerance", {})
        entry = tolerance.get(key)
        if entry is None:
            entry = next((v for k, v in tolerance.items() if k.startswith(key)), None)
        if isinstance(entry, dict):
            return float(entry.get("atol", 0.0)), float(entry.get("rtol", 0.0))
        return default

    def cmp(self, name: str, got, tol_key: str | None = None, golden: str | None = None) -> CaseResult:
        atol, rtol = self.tol(tol_key) if tol_key else (0.0, 0.0)
        self.checked.add(golden or name)
        return compare(STAGE, f"{self.id}.{name}", got, self.out(golden or name), atol, rtol)

    def named(self, stem: str, value: float) -> str | None:
        """The output named stem + value (e.g. merge_alpha_0_6 for 0.6), None when absent."""
        for text in (str(float(value)), f"{float(value):g}", f"{float(value):.1f}"):
            name = f"{stem}{text.replace('.', '_')}"
            if self.has(name):
                return name
        return None

    def unchecked(self) -> CaseResult:
        left = sorted(set(self.case.get("outputs", {})) - self.checked)
        return check_fact(STAGE, f"{self.id}.all_outputs_checked", not left, f"outputs not compared: {left}")

    def options(self, params: dict | None = None, **changes) -> DecodingOptions:
        p = dict(self.case["params"] if params is None else params)
        values = dict(num_beams=int(p["num_beams"]), do_sample=bool(p["do_sample"]), top_p=float(p["top_p"]),
                      top_k=int(p["top_k"]), temperature=float(p["temperature"]),
                      repetition_penalty=float(p["repetition_penalty"]),
                      length_penalty=float(p["length_penalty"]), max_mel_tokens=int(p["max_generate_length"]),
                      num_return_sequences=int(p.get("num_return_sequences", 1)))
        values.update(changes)
        return DecodingOptions(**values)


def _generate(model, c: _Case, spk_latent, text, emovec, options, generator=None, record=False):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MaxMelTokensWarning)
        gen = generate(model, spk_latent, text, emovec, options, generator, record=record)
    warned = any(issubclass(w.category, MaxMelTokensWarning) for w in caught)
    return gen, warned


def _conditioning(model, c: _Case) -> Iterator[CaseResult]:
    spk, emo = c.input("spk_cond_emb"), c.input("emo_cond_emb")
    lengths = {k: c.input(k) for k in ("cond_lengths", "emo_cond_lengths", "cond_lengths_100", "cond_lengths_T",
                                         "emo_cond_lengths_T")}
    width = spk.shape[-1]
    yield check_fact(STAGE, f"{c.id}.infer_v2_lengths_are_feature_width",
                     int(lengths["cond_lengths"][0]) == width and int(lengths["emo_cond_lengths"][0]) == emo.shape[-1],
                     f"golden lengths {lengths['cond_lengths'].tolist()} vs feature width {width}")
    for suffix, key in (("", "cond_lengths"), ("_len100", "cond_lengths_100")):
        latent, states, mask = model.speaker_conditioning(spk, lengths[key])
        yield c.cmp(f"spk_conformer_out{suffix}", states, "float")
        yield c.cmp(f"spk_conformer_mask{suffix}", mask)
        yield c.cmp(f"spk_cond_latent{suffix}", latent, "float")
    # The public API applies the official length quirk itself (length = feature width).
    yield c.cmp("speaker_latent_api", model.speaker_latent(spk), "float", golden="spk_cond_latent")
    yield c.cmp("spk_cond_latent_lenT", model.speaker_conditioning(spk, lengths["cond_lengths_T"])[0], "float")
    out, states, mask = model.emotion_conditioning(emo, lengths["emo_cond_lengths"])
    yield c.cmp("emo_conformer_out", states, "float")
    yield c.cmp("emo_conformer_mask", mask)
    yield c.cmp("emo_perceiver_out", out, "float")
    yield c.cmp("emo_perceiver_out_lenT", model.emotion_conditioning(emo, lengths["emo_cond_lengths_T"])[0], "float")
    yield c.cmp("emovec_emo", model.emovec(emo), "float")
    yield c.cmp("emovec_spk", model.emovec(spk), "float")
    for alpha in c.case["params"]["merge_alphas"]:
        name = c.named("merge_alpha_", alpha)
        if name is None:
            yield check_fact(STAGE, f"{c.id}.merge_alpha_{alpha}", False, "no golden output for this alpha")
        else:
            yield c.cmp(name, model.merge_emovec(spk, emo, float(alpha)), "float")
    yield c.cmp("merge_same_audio", model.merge_emovec(spk, spk, 1.0), "float")
    yield c.cmp("speed_emb_weight", model.speed_emb.weight, "float")


def _greedy(model, c: _Case) -> Iterator[CaseResult]:
    spk, text, emovec = c.input("spk_cond_emb"), c.input("text_tokens"), c.input("emo_vec")
    stop = model.cfg.stop_mel_token
    spk_latent = model.speaker_latent(spk)
    yield c.cmp("speech_conditioning_latent", spk_latent, "float")
    prompt, _ = model.prompt(spk_latent, text[0], emovec)
    yield c.cmp("prompt_embeds", prompt, "float")
    gen, warned = _generate(model, c, spk_latent, text, emovec, c.options(), record=True)
    yield c.cmp("codes", gen.codes)
    codes, lens, hit = trim_codes(gen.codes, stop)
    yield c.cmp("codes_trimmed", codes)
    yield c.cmp("code_lens", lens)
    yield check_fact(STAGE, f"{c.id}.max_tokens_warning", warned == hit == bool(gen.codes[0, -1] != stop),
                     f"warned={warned}, trim_codes hit_max={hit}")
    last = int(c.case.get("facts", {}).get("step_logits_last_index", len(gen.trace.logits) - 1))
    for name, index in (("step_logits_0", 0), ("step_logits_1", 1), ("step_logits_last", last)):
        got = gen.trace.logits[index] if index < len(gen.trace.logits) else torch.empty(0)
        yield c.cmp(name, got, "logits")
    if c.has("codes_short"):
        short = int(c.case["params"]["max_generate_length_short"])
        gen_s, warned_s = _generate(model, c, spk_latent, text, emovec, c.options(max_mel_tokens=short))
        yield c.cmp("codes_short", gen_s.codes)
        _, lens_s, hit_s = trim_codes(gen_s.codes, stop)
        yield c.cmp("code_lens_short", lens_s)
        yield check_fact(STAGE, f"{c.id}.max_tokens_warning_short", warned_s == hit_s == bool(gen_s.codes[0, -1] != stop),
                         f"warned={warned_s}, trim_codes hit_max={hit_s}")


def _beam_search(model, c: _Case) -> Iterator[CaseResult]:
    spk, text, emovec = c.input("spk_cond_emb"), c.input("text_tokens"), c.input("emo_vec")
    spk_latent = model.speaker_latent(spk)
    gen, _ = _generate(model, c, spk_latent, text, emovec, c.options(), record=True)
    yield c.cmp("codes", gen.codes)
    codes, lens, _ = trim_codes(gen.codes, model.cfg.stop_mel_token)
    yield c.cmp("codes_trimmed", codes)
    yield c.cmp("code_lens", lens)
    trace = gen.trace
    if c.has("beam_step_scores"):
        yield c.cmp("beam_step_scores", torch.stack(trace.beam_scores), "beam_step_scores")
        yield c.cmp("beam_step_tokens", torch.stack(trace.beam_tokens))
        yield c.cmp("beam_step_beams", torch.stack(trace.beam_sources))


def _logits_pipeline(model, c: _Case) -> Iterator[CaseResult]:
    p = c.case["params"]
    stop = model.cfg.stop_mel_token
    sample_opts = DecodingOptions(num_beams=1, do_sample=True, top_p=float(p["top_p"]), top_k=int(p["top_k"]),
                                  temperature=float(p["temperature"]), repetition_penalty=float(p["repetition_penalty"]))
    raw, history = c.input("sample_raw_logits"), c.input("sample_history")
    after_penalty = apply_repetition_penalty(raw, history, sample_opts.repetition_penalty)
    yield c.cmp("sample_after_repetition_penalty", after_penalty, "sample")
    after_top_k = apply_top_k(after_penalty / sample_opts.temperature, sample_opts.top_k, 1)
    yield c.cmp("sample_after_top_k", after_top_k, "sample")
    yield c.cmp("sample_processed", process_scores(raw, history, sample_opts, history.shape[1], stop), "sample")
    beams = c.input("beam_raw_logits").shape[0]
    beam_opts = DecodingOptions(num_beams=beams, do_sample=True, top_p=sample_opts.top_p, top_k=sample_opts.top_k,
                                temperature=sample_opts.temperature, repetition_penalty=sample_opts.repetition_penalty)
    braw, bhist, bscores = c.input("beam_raw_logits"), c.input("beam_history"), c.input("beam_scores")
    processed = process_scores(torch.log_softmax(braw, dim=-1), bhist, beam_opts, bhist.shape[1], stop)
    yield c.cmp("beam_processed", processed, "beam_processed")
    probs = torch.softmax((processed + bscores[:, None]).view(1, -1), dim=-1)
    yield c.cmp("beam_probs", probs, "beam_probs")
    facts = c.case.get("facts", {})
    if "kept_per_row_sample" in facts:
        kept = torch.isfinite(process_scores(raw, history, sample_opts, history.shape[1], stop)).sum(1).tolist()
        yield check_fact(STAGE, f"{c.id}.kept_per_row_sample", kept == facts["kept_per_row_sample"], f"kept {kept}")
    if "kept_per_row_beam" in facts:
        kept = torch.isfinite(processed).sum(1).tolist()
        yield check_fact(STAGE, f"{c.id}.kept_per_row_beam", kept == facts["kept_per_row_beam"], f"kept {kept}")


def _latent_forward(model, c: _Case) -> Iterator[CaseResult]:
    latent = model.latents(c.input("speech_conditioning_latent"), c.input("text_tokens"), c.input("codes"),
                           c.input("emo_vec"))
    yield c.cmp("latent", latent, "float")
    # Official quirk: use_speed's value is ignored, so the use_speed=ones golden is the same tensor.
    if c.has("latent_use_speed_ones"):
        yield c.cmp("latent_use_speed_ones", latent, "float")


def _emo_vector(model, c: _Case, ref_dir: Path) -> Iterator[CaseResult]:
    matrices = EmotionMatrices.from_folder(ref_dir)
    spk, style, weights = c.input("spk_cond_emb"), c.input("style"), c.input("emo_vector")
    params = c.case["params"]
    mix = emovec_from_weights(weights, style, matrices, 1.0)
    yield c.cmp("selected_index", torch.tensor(mix.indices, dtype=torch.long))
    yield c.cmp("cosine_similarities", mix.similarities, "float")
    yield c.cmp("weight_vector", mix.weights, "float")
    yield c.cmp("selected_rows", mix.rows, "float")
    yield c.cmp("emovec_mat", mix.emovec_mat, "float")
    base = model.merge_emovec(spk, spk, 1.0)
    yield c.cmp("base_emovec", base, "float")
    final = mix.apply(base)
    yield c.cmp("emovec_final", final, "float")
    alpha = float(params["emo_alpha_variant"])
    weight_name = c.named("weight_vector_alpha_", alpha) or "weight_vector_alpha_?"
    final_name = c.named("emovec_final_alpha_", alpha) or "emovec_final_alpha_?"
    scaled = emovec_from_weights(weights, style, matrices, alpha)
    if "emo_vector_scaled" in params:
        yield check_fact(STAGE, f"{c.id}.emo_vector_scaled", scaled.weights.tolist() == torch.tensor(
            params["emo_vector_scaled"], dtype=torch.float32).tolist(), f"got {scaled.weights.tolist()}")
    yield c.cmp(weight_name, scaled.weights, "float")
    yield c.cmp(final_name, scaled.apply(base), "float")
    if c.has("codes"):
        gen, _ = _generate(model, c, model.speaker_latent(spk), c.input("text_tokens"), final,
                           c.options(params["decode"]))
        yield c.cmp("codes", gen.codes)


def _special_ids(model, c: _Case) -> Iterator[CaseResult]:
    spk, text, emovec = c.input("spk_cond_emb"), c.input("text_tokens"), c.input("emo_vec")
    cfg = model.cfg
    spk_latent = model.speaker_latent(spk)
    gen, _ = _generate(model, c, spk_latent, text, emovec, c.options())
    yield c.cmp("codes", gen.codes)
    ids = text[0]
    clean = ids[(ids != cfg.start_text_token) & (ids != cfg.stop_text_token)]
    yield c.cmp("codes_clean_text", _generate(model, c, spk_latent, clean, emovec, c.options())[0].codes)
    codes, _, _ = trim_codes(gen.codes, cfg.stop_mel_token)
    yield c.cmp("latent", model.latents(spk_latent, text, codes, emovec), "float")


def _beam_sample_seeded(model, c: _Case) -> Iterator[CaseResult]:
    spk, text, emovec = c.input("spk_cond_emb"), c.input("text_tokens"), c.input("emo_vec")
    seed = int(c.case["params"]["torch_manual_seed"])
    generator = torch.Generator().manual_seed(seed)
    gen, _ = _generate(model, c, model.speaker_latent(spk), text, emovec, c.options(), generator)
    r = c.cmp("codes", gen.codes)
    note = ("informational: needs identical torch RNG use (one multinomial of 2*num_beams over (1, beams*V) per "
            "step from a generator seeded like torch.manual_seed); ours draws exactly that")
    yield CaseResult(r.stage, r.name, r.max_abs_error, r.tolerance, r.passed,
                     f"{note}{'; ' + r.detail if r.detail else ''}")


KINDS = {
    "conditioning": _conditioning,
    "greedy": _greedy,
    "beam_search": _beam_search,
    "logits_pipeline": _logits_pipeline,
    "latent_forward": _latent_forward,
    "text_with_special_ids": _special_ids,
    "beam_sample_seeded": _beam_sample_seeded,
}


def check(ref_dir: Path) -> Iterator[CaseResult]:
    ref_dir = Path(ref_dir)
    goldens = Goldens(ref_dir, STAGE)
    model = load_gpt(ref_dir)
    apply_plan(make_plan("fp32"), gpt=model)   # the engine's exact path (its fp32 decode kernels)
    with torch.inference_mode():
        for case in goldens.manifest["cases"]:
            c = _Case(goldens, case)
            kind = case["id"].split("_", 1)[1] if "_" in case["id"] else case["id"]
            try:
                if kind == "emo_vector":
                    yield from _emo_vector(model, c, ref_dir)
                elif kind in KINDS:
                    yield from KINDS[kind](model, c)
                else:
                    yield check_fact(STAGE, f"{case['id']}.<unknown case kind>", False, f"no checker for {kind!r}")
                    continue
                yield c.unchecked()
            except Exception as exc:  # one broken case must not hide the others
                yield CaseResult(STAGE, f"{case['id']}.<crashed>", math.inf, 0.0, False, f"{type(exc).__name__}: {exc}")
