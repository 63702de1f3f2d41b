"""The pipeline's stages as public functions over one set of loaded models: one chain, written once.

    models = load(folder, device="cpu", plan=make_plan("auto"))
    spk = speaker_conditioning(models, "me.wav")                     # reference clip -> SpeakerConditioning
    segments = text_segments(models, "Hello there.", 120)            # text -> token ids per segment
    codes, hit_max = generate_codes(models, spk, ids, emovec, options, generator)   # or code_search + steps
    latent = gpt_latents(models, spk, ids, codes, emovec)            # the GPT's second pass
    cond = semantic_condition(models, codes, latent)                 # codec vectors + latents, length-regulated
    mel = s2mel_generate(models, spk, cond, steps, cfg_rate, generator, noise)   # the CFM, prompt part removed
    wav_pcm = vocode(models, mel)                                    # BigVGAN, 16-bit PCM scale

`Engine` (pipeline.py), the parity checks, fidelity and the benches call these; each runs its stage at the
plan's precision (bf16 autocast where the plan says so) and returns fp32. Each takes explicit inputs and
holds no state between calls, so a caller can run them per segment (streaming) or for several requests at
once (batching). The two iterative stages also come in steps, for batcher.Batcher: `code_search` (a
decoding.Search that decoding.step_all advances with other requests') + `search_codes`, and `s2mel_begin` /
`s2mel_step` / `s2mel_mel` (one Euler step at a time); `generate_codes` and `s2mel_generate` run them alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .config import ModelFolder
from .plan import PrecisionPlan, make_plan
from .results import PCM_SCALE, SpeakerConditioning


@dataclass
class Models:
    """The models of one folder, loaded once and converted for one precision plan."""

    folder: ModelFolder
    device: torch.device
    plan: PrecisionPlan
    text: object            # text.TextFrontEnd
    gpt: torch.nn.Module    # models.gpt.UnifiedVoice
    emotions: object        # emotion.EmotionMatrices
    w2v: torch.nn.Module    # features.SemanticFeatures
    codec: torch.nn.Module  # models.codec.SemanticCodec
    campplus: torch.nn.Module
    s2mel: torch.nn.Module  # models.s2mel.S2Mel
    vocoder: torch.nn.Module

    def autocast(self, stage: str):
        """The context `stage` runs in under this plan (bf16 autocast for a bf16 stage, else nothing)."""
        from .precision import autocast

        return autocast(self.device, self.plan[stage])


def load(model_dir: str | Path | ModelFolder, device: str | torch.device = "cpu", plan=None) -> Models:
    """Load every model of a folder and apply the precision plan (`precision.apply_plan`) once."""
    from . import features
    from .emotion import EmotionMatrices
    from .models.bigvgan import BigVGAN
    from .models.campplus import CAMPPlus
    from .models.codec import SemanticCodec
    from .models.gpt import load_gpt
    from .models.s2mel import S2Mel
    from .precision import apply_plan
    from .text import TextFrontEnd

    device = torch.device(device)
    plan = make_plan(plan, device=device.type)
    folder = model_dir if isinstance(model_dir, ModelFolder) else ModelFolder(model_dir)
    m = Models(folder=folder, device=device, plan=plan,
               text=TextFrontEnd.from_folder(folder).load(),   # glossary.yaml if present; FSTs now
               gpt=load_gpt(folder).to(device), emotions=EmotionMatrices.from_folder(folder),
               w2v=features.SemanticFeatures.from_folder(folder).to(device),
               codec=SemanticCodec.from_folder(folder).to(device), campplus=CAMPPlus.from_folder(folder).to(device),
               s2mel=S2Mel.from_folder(folder).to(device), vocoder=BigVGAN.from_folder(folder).to(device))
    apply_plan(plan, gpt=m.gpt, w2v=m.w2v, codec=m.codec, campplus=m.campplus, s2mel=m.s2mel, vocoder=m.vocoder)
    return m


# ---- reference audio -----------------------------------------------------------------------------------

@torch.inference_mode()
def speaker_conditioning(m: Models, audio_path: str | Path) -> SpeakerConditioning:
    """A reference clip -> everything the pipeline derives from it (SPEC-s2mel.md), fp32 in every mode."""
    from . import audio as a

    with m.autocast("conditioning"):
        ref = a.load_reference(audio_path)
        wav22k, wav16k = ref.wav22k.to(m.device), ref.wav16k.to(m.device)
        emo16k = a.load_emotion_audio(audio_path).to(m.device)
        if m.plan.conditioning == "fp32":
            spk_cond_emb, emo_cond_emb = m.w2v(wav16k), m.w2v(emo16k)
        else:  # the speaker and emotion clips (the same file, two resamplings) in one batch
            spk_cond_emb, emo_cond_emb = m.w2v.embed_together(wav16k, emo16k)
        codes, S_ref = m.codec.quantize(spk_cond_emb)
        ref_mel = a.mel_spectrogram(wav22k, m.folder.config.s2mel.preprocess_params.spect_params)
        style = m.campplus(a.kaldi_fbank(wav16k)[None])
        prompt_condition = m.s2mel.length_regulator(S_ref, torch.tensor([ref_mel.shape[-1]], device=m.device))
        spk_latent = m.gpt.speaker_latent(spk_cond_emb)
    cond = SpeakerConditioning(spk_cond_emb, emo_cond_emb, codes, S_ref, ref_mel, style, prompt_condition, spk_latent)
    return SpeakerConditioning(**{k: v.float() if v.is_floating_point() else v for k, v in cond.__dict__.items()})


# ---- text and GPT --------------------------------------------------------------------------------------

def text_segments(m: Models, text: str, max_text_tokens_per_segment: int, first_segment_tokens: int = 0) -> list[list[int]]:
    """Normalised, tokenised text split into segments of token ids (the official segmentation);
    `first_segment_tokens` > 0 keeps the first segment that short (the official quick_streaming_tokens: the
    first audio of a stream comes sooner)."""
    return m.text.segments_for_synthesis(text, max_text_tokens_per_segment, first_segment_tokens)


@torch.inference_mode()
def code_search(m: Models, spk: SpeakerConditioning, ids: list[int] | torch.Tensor, emovec: torch.Tensor, options,
                generator: Optional[torch.Generator] = None):
    """One segment's code generation, checked, not started: a decoding.Search, run alone (`generate_codes`) or
    stepped together with other requests' (decoding.step_all: continuous batching)."""
    from .decoding import search

    text_ids = torch.as_tensor(ids, dtype=torch.int32, device=m.device)
    return search(m.gpt, spk.spk_latent, text_ids, emovec, options, generator)


def search_codes(m: Models, s) -> tuple[torch.Tensor, bool]:
    """A finished search's codes -> ((1, N) codes after stop-code trimming, whether max_mel_tokens cut it)."""
    from .decoding import trim_codes

    codes, _, hit_max = trim_codes(s.codes, m.folder.config.gpt.stop_mel_token)
    return codes, bool(hit_max)


@torch.inference_mode()
def run_search(m: Models, s) -> None:
    """Run a search alone to its end."""
    from .decoding import step_all

    s.start()
    while not s.done:
        step_all(m.gpt, [s])


def generate_codes(m: Models, spk: SpeakerConditioning, ids: list[int] | torch.Tensor, emovec: torch.Tensor,
                   options, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, bool]:
    """Semantic codes of one segment -> ((1, N) codes after stop-code trimming, whether max_mel_tokens cut it).
    `options`: decoding.DecodingOptions. The max_mel_tokens warning is the caller's (one per request)."""
    s = code_search(m, spk, ids, emovec, options, generator)
    run_search(m, s)
    return search_codes(m, s)


@torch.inference_mode()
def gpt_latents(m: Models, spk: SpeakerConditioning, ids: list[int] | torch.Tensor, codes: torch.Tensor,
                emovec: torch.Tensor) -> torch.Tensor:
    """The GPT's second pass over text + codes -> the latents S2Mel reads."""
    text_ids = torch.as_tensor(ids, dtype=torch.int32, device=m.device)
    return m.gpt.latents(spk.spk_latent, text_ids, codes, emovec)


# ---- S2Mel and the vocoder -----------------------------------------------------------------------------

@torch.inference_mode()
def semantic_condition(m: Models, codes: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """Codes + latents -> the length-regulated semantic condition of the new speech (1, T_target, C)."""
    from .models.s2mel import target_length

    with m.autocast("s2mel"):
        s2 = m.s2mel
        S_infer = m.codec.vq2emb(codes).transpose(1, 2) + s2.gpt_layer(latent)
        target = torch.tensor([target_length(codes.shape[1])], device=m.device)
        return s2.length_regulator(S_infer, target).float()


@torch.inference_mode()
def s2mel_begin(m: Models, spk: SpeakerConditioning, cond: torch.Tensor, steps: int, cfg_rate: float,
                generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None):
    """The flow matching's state before its first step (the starting noise drawn from `generator` now, or
    `noise` (1, 80, T_ref + T_target)): a models.s2mel.Euler that `s2mel_step` advances until `.done`."""
    with m.autocast("s2mel"):
        cat = torch.cat([spk.prompt_condition, cond], dim=1)
        return m.s2mel.cfm.begin(cat, torch.tensor([cat.shape[1]], device=m.device), spk.ref_mel, spk.style, steps,
                                 cfg_rate=cfg_rate, noise=noise, generator=generator)


@torch.inference_mode()
def s2mel_step(m: Models, state) -> None:
    """One Euler step (DiT with classifier-free guidance) of one request's flow."""
    with m.autocast("s2mel"):
        m.s2mel.cfm.advance(state)


def s2mel_mel(spk: SpeakerConditioning, state) -> torch.Tensor:
    """A finished flow -> the mel of the new speech (1, 80, T_target), prompt part removed."""
    return state.x[:, :, spk.ref_mel.shape[-1]:].float()


def s2mel_generate(m: Models, spk: SpeakerConditioning, cond: torch.Tensor, steps: int, cfg_rate: float,
                   generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The flow matching (DiT, `steps` Euler steps, classifier-free guidance `cfg_rate`) from the speaker's prompt
    and the condition -> the mel of the new speech (1, 80, T_target), prompt part removed. `noise`: the starting
    noise (1, 80, T_ref + T_target) instead of drawing it from `generator`."""
    state = s2mel_begin(m, spk, cond, steps, cfg_rate, generator, noise)
    while not state.done:
        s2mel_step(m, state)
    return s2mel_mel(spk, state)


@torch.inference_mode()
def vocode(m: Models, mel: torch.Tensor) -> torch.Tensor:
    """BigVGAN: mel (1, 80, T) -> (1, samples) float32 in 16-bit PCM scale, as the official code produces."""
    with m.autocast("vocoder"):
        wav = m.vocoder(mel).float().reshape(1, -1)
    return (wav * PCM_SCALE).clamp(-PCM_SCALE, PCM_SCALE)
