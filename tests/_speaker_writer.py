"""Child process for tests/test_speakers.py: writes to a speaker store so the test can kill it or race it.

    python _speaker_writer.py overwrite ROOT ID NUMEL SEED    add ID (overwrite=True) with entry(NUMEL, SEED)
    python _speaker_writer.py churn ROOT NUMEL                forever: overwrite k0..k2, cache clips (2 kept)
    python _speaker_writer.py add ROOT PREFIX COUNT GO_FILE   once GO_FILE exists, add PREFIX-0.. and cache them
Each prints "ready" on stdout when it is about to write.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

FINGERPRINT = "test-model-fingerprint"


def entry(numel: int, seed: int) -> dict[str, torch.Tensor]:
    """The tensors written for `seed`: the test recomputes them to check what it reads back."""
    g = torch.Generator().manual_seed(seed)
    return {"big": torch.randn(numel, generator=g), "seed": torch.tensor([seed], dtype=torch.int64)}


def add_seed(prefix: str, i: int) -> int:
    return sum(map(ord, prefix)) * 1000 + i


def clip_sha(seed: int) -> str:
    from indextts_fast.speakers import sha256_of
    return sha256_of(f"clip bytes {seed}".encode())


def main(mode: str, root: str, *args: str) -> None:
    torch.set_num_threads(1)
    from indextts_fast.speakers import SpeakerStore, sha256_of
    store = SpeakerStore(root, cache_entries=2)
    audio = sha256_of(b"reference audio")
    if mode == "overwrite":
        speaker_id, numel, seed = args[0], int(args[1]), int(args[2])
        tensors = entry(numel, seed)
        print("ready", flush=True)
        store.put(speaker_id, tensors, model_fingerprint=FINGERPRINT, audio_sha256=audio, overwrite=True)
    elif mode == "churn":
        numel = int(args[0])
        print("ready", flush=True)
        for seed in range(10**6):
            tensors = entry(numel, seed)
            store.put(f"k{seed % 3}", tensors, model_fingerprint=FINGERPRINT, audio_sha256=audio, overwrite=True)
            store.cache_put(clip_sha(seed), FINGERPRINT, tensors)
    elif mode == "add":
        prefix, count, go = args[0], int(args[1]), Path(args[2])
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.005)
        for i in range(count):
            seed = add_seed(prefix, i)
            store.put(f"{prefix}-{i}", entry(1000, seed), model_fingerprint=FINGERPRINT, audio_sha256=audio)
            store.cache_put(clip_sha(seed), FINGERPRINT, entry(1000, seed))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
