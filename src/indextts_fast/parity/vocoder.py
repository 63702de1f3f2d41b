"""Vocoder goldens (SPEC-s2mel.md 9.3): BigVGAN on a mel excerpt (g.bigvgan) and on the 25-step CFM output
shaped as infer_v2 does it, in [-1, 1] and in 16-bit PCM scale (g.pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..plan import make_plan
from ..precision import apply_plan
from . import CaseResult, Goldens, check_fact, compare

STAGE = "vocoder"
PCM_SCALE = 32767.0


def check(ref_dir: Path) -> Iterator[CaseResult]:
    from ..config import ModelFolder
    from ..models.bigvgan import BigVGAN

    g = Goldens(ref_dir, STAGE)
    model = BigVGAN.from_folder(ModelFolder(ref_dir))
    apply_plan(make_plan("fp32"), vocoder=model)   # as the engine prepares it
    yield check_fact(STAGE, "load.strict", True)
    for case in g.manifest["cases"]:
        cid, tol = case["id"], case.get("tolerance", {})
        (mel,) = (g[n] for n in case["inputs"])
        with torch.inference_mode():
            wav = model(mel)
        if cid == "g.bigvgan":
            yield compare(STAGE, f"{cid}.wav", wav, g[case["outputs"][0]], float(tol.get("atol", 0.0)))
        elif cid == "g.pipeline":
            wav = wav.squeeze().unsqueeze(0)  # infer_v2's shaping: (1, N)
            pcm = torch.clamp(PCM_SCALE * wav, -PCM_SCALE, PCM_SCALE)
            for name, got in (("wav", wav), ("wav_pcm_scale", pcm)):
                yield compare(STAGE, f"{cid}.{name}", got, g[f"pipeline.{name}"], float(tol[name]["atol"]))
        else:
            yield check_fact(STAGE, cid, False, "unknown case id (checker needs updating)")
