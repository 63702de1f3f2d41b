"""stages.py: each stage usable on its own; composed by hand they give exactly what Engine gives."""

import json

import numpy as np
import pytest
import torch

from indextts_fast import stages
from indextts_fast.pipeline import PCM_SCALE, Engine
from indextts_fast.presets import resolve
from indextts_fast.results import Emotion


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return Engine(tiny_dir)


@pytest.fixture(scope="module")
def prompt(tiny_dir):
    return tiny_dir / json.loads((tiny_dir / "goldens" / "e2e.json").read_text())["prompt"]["file"]


def test_the_chain_by_hand_is_the_engine(engine, prompt):
    m = engine.models
    settings = resolve("extreme", {"max_mel_tokens": 24})
    spk = stages.speaker_conditioning(m, prompt)
    assert all(torch.equal(a, b) for a, b in zip(spk.tensors().values(), engine.extract_speaker(prompt).tensors().values()))
    (ids,) = stages.text_segments(m, "The quick brown fox.", settings.max_text_tokens_per_segment)
    emovec = engine.emotion_vector(spk, Emotion())
    gen = torch.Generator().manual_seed(7)
    codes, hit_max = stages.generate_codes(m, spk, ids, emovec, settings.decoding(), gen)
    latent = stages.gpt_latents(m, spk, ids, codes, emovec)
    cond = stages.semantic_condition(m, codes, latent)
    mel = stages.s2mel_generate(m, spk, cond, settings.diffusion_steps, settings.cfg_rate, gen)
    wav = stages.vocode(m, mel)
    assert mel.shape[:2] == (1, 80) and wav.dtype == torch.float32 and float(wav.abs().max()) <= PCM_SCALE
    got = engine.synthesize("The quick brown fox.", voice=prompt, settings=settings, seed=7)
    assert torch.equal(got.segments[0].codes, codes) and got.segments[0].hit_max_mel_tokens == hit_max
    assert np.array_equal(got.audio, (wav[0] / PCM_SCALE).clamp(-1, 1).numpy())


def test_models_load_on_their_own_under_a_plan(tiny_dir):
    from indextts_fast.plan import make_plan

    m = stages.load(tiny_dir, "cpu", make_plan({"gpt": "int8"}))
    assert m.plan.gpt == "int8" and type(m.gpt.mel_head).__name__ == "Int8Linear"
    assert m.autocast("s2mel").__class__.__name__ == "nullcontext"
