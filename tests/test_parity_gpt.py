"""Golden parity of the GPT stage (SPEC-gpt §14): every case of goldens/gpt.json, on the public tiny set and on
a copy whose gpt.pth uses the {'model': state_dict} layout."""

import shutil

import torch

from indextts_fast.parity.gpt import check


def _assert_all_pass(ref_dir):
    results = list(check(ref_dir))
    failed = [r.line() for r in results if not r.passed]
    assert not failed, "\n".join(failed)
    names = {r.name.split(".")[0] for r in results}
    assert {"a_conditioning", "b_greedy", "c_beam_search", "d_logits_pipeline", "e_latent_forward",
            "f_emo_vector", "g_text_with_special_ids", "h_beam_sample_seeded"} <= names
    return results


def test_tiny_gpt_parity(tiny_dir):
    results = _assert_all_pass(tiny_dir)
    assert len(results) >= 50


def test_model_wrapped_checkpoint_layout(tiny_dir, tmp_path):
    for name in ("config.yaml", "tiny_overrides.json", "feat1.pt", "feat2.pt"):
        shutil.copy(tiny_dir / name, tmp_path / name)
    shutil.copytree(tiny_dir / "goldens", tmp_path / "goldens")
    state = torch.load(tiny_dir / "gpt.pth", map_location="cpu", weights_only=True)
    torch.save({"model": state}, tmp_path / "gpt.pth")
    _assert_all_pass(tmp_path)
