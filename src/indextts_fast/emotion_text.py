"""Emotion from text: the release's small Qwen emotion classifier (config.yaml `qwen_emo_path`,
`qwen0.6bemo4-merge/`) reads a text and answers a JSON object of Chinese emotion names -> scores, which
become the 8-value emotion vector (happy, angry, sad, afraid, disgusted, melancholic, surprised, calm).

Official behaviour reproduced: system prompt "文本情感分类" in the model's chat template (thinking off),
the answer after a closing think tag is parsed as JSON, else as `name: number` pairs; the classifier cannot
tell sad from melancholic, so when the text contains a melancholy word the two scores are swapped; scores
are clamped to [0, 1.2]; no emotion at all means calm 1.0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .config import ModelFolder
from .errors import ModelFolderError

SYSTEM_PROMPT = "文本情感分类"
ORDER = ["高兴", "愤怒", "悲伤", "恐惧", "反感", "低落", "惊讶", "自然"]  # = the 8 weights' order
MELANCHOLY_WORDS = ("低落", "melancholy", "melancholic", "depression", "depressed", "gloomy")
MAX_SCORE = 1.2
THINK_END_ID = 151668  # "</think>" in the Qwen3 vocabulary
MAX_NEW_TOKENS = 256  # the answer is a short JSON object (official: 32768)


def parse_scores(answer: str, text: str) -> list[float]:
    """The classifier's answer -> 8 weights in ORDER (see the module docstring for the rules)."""
    try:
        content = json.loads(answer)
        if not isinstance(content, dict):
            raise ValueError
    except ValueError:
        content = {m.group(1): float(m.group(2))
                   for m in re.finditer(r'([^\s":.,]+?)"?\s*:\s*([\d.]+)', answer)}
    scores = {}
    for name in ORDER:
        try:
            scores[name] = float(content.get(name, 0.0))
        except (TypeError, ValueError):
            scores[name] = 0.0
    if any(word in text.lower() for word in MELANCHOLY_WORDS):
        scores["悲伤"], scores["低落"] = scores["低落"], scores["悲伤"]
    weights = [min(MAX_SCORE, max(0.0, scores[name])) for name in ORDER]
    if all(w <= 0.0 for w in weights):
        weights[ORDER.index("自然")] = 1.0
    return weights


class EmotionTextModel:
    """The Qwen emotion classifier of a model folder (loaded from the folder only, never the hub)."""

    def __init__(self, path: Path, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).to(device).eval()

    @classmethod
    def from_folder(cls, folder: ModelFolder, device: str = "cpu") -> "EmotionTextModel":
        name = folder.config.qwen_emo_path
        path = folder.root / name if name else None
        if path is None or not (path / "config.json").is_file():
            raise ModelFolderError(
                f"emotion from text needs the emotion classifier of the release "
                f"({path if path else 'config.yaml: qwen_emo_path'} with config.json, tokenizer and weights), "
                f"which this model folder does not have; give an emotion vector or an emotion clip instead")
        return cls(path, device)

    def weights(self, text: str) -> list[float]:
        import torch

        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                    enable_thinking=False)
        inputs = self.tokenizer([prompt], return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS,
                                      pad_token_id=self.tokenizer.eos_token_id)
        ids = out[0][inputs.input_ids.shape[1]:].tolist()
        start = len(ids) - ids[::-1].index(THINK_END_ID) if THINK_END_ID in ids else 0
        return parse_scores(self.tokenizer.decode(ids[start:], skip_special_tokens=True), text)
