"""S2Mel (gpt_layer, length regulator, CFM with the DiT): golden parity, strict loading, the real layout."""

import shutil

import numpy as np
import pytest
import torch

from indextts_fast.config import ModelFolder
from indextts_fast.errors import CheckpointError, OptionError
from indextts_fast.models.s2mel import MODULES, S2Mel, target_length, write_random_checkpoint
from indextts_fast.parity import Goldens, run


def read_listing(path):
    """{key: (shape, dtype)} of a shared/reference state_dict_real_*.txt listing."""
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), dtype)
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_s2mel(tiny_dir):
    return S2Mel.from_folder(ModelFolder(tiny_dir))


def copy_folder(src, dst):
    for name in ("config.yaml", "tiny_overrides.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return ModelFolder(dst)


def test_parity_every_case(tiny_dir):
    lines = []
    passed, failed = run(tiny_dir, ["s2mel"], emit=lines.append)
    assert failed == 0, "\n".join(lines)
    runs = Goldens(tiny_dir, "s2mel").manifest["cfm_runs"]
    assert sum(f".{r['output'].removeprefix('cfm.')} " in line for line in lines for r in runs) == len(runs)
    assert {r["diffusion_steps"] for r in runs} >= {25, 15, 10, 5}


def test_target_length_is_a_float32_product():
    for n in range(1, 3000):
        assert target_length(n) == int(np.float32(n) * np.float32(1.72)), n


def test_target_length_matches_goldens(tiny_dir):
    g = Goldens(tiny_dir, "s2mel")
    assert [target_length(int(n)) for n in g["lr.code_lens"]] == g["lr.target_lengths"].tolist()


def test_cfm_noise_generator_and_options(tiny_dir, tiny_s2mel):
    g = Goldens(tiny_dir, "s2mel")
    mu, x_lens, prompt, style, noise = (g[n] for n in ("cfm.cat_condition", "cfm.x_lens", "cfm.prompt",
                                                        "cfm.style", "cfm.noise"))
    kept = noise.clone()
    cfm = tiny_s2mel.cfm
    a = cfm.inference(mu, x_lens, prompt, style, 2, 0.7, generator=torch.Generator().manual_seed(5))
    b = cfm.inference(mu, x_lens, prompt, style, 2, 0.7, generator=torch.Generator().manual_seed(5))
    c = cfm.inference(mu, x_lens, prompt, style, 2, 0.7, noise=noise)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(noise, kept)  # the caller's noise is not modified
    assert a.shape == (1, 80, mu.shape[1]) and bool((a[:, :, : prompt.shape[-1]] == 0).all())
    with pytest.raises(OptionError, match="noise must have shape"):
        cfm.inference(mu, x_lens, prompt, style, 2, noise=noise[..., :-1])
    with pytest.raises(OptionError, match="steps"):
        cfm.inference(mu, x_lens, prompt, style, 0, noise=noise)


def test_dit_skips_only_frames_nobody_reads(tiny_s2mel):
    # from_frame: the velocity of frames from_frame.. equals the full call's (the WaveNet head gets enough
    # left context), with and without padded frames (x_lens < T), including slices shorter than the context
    est = tiny_s2mel.cfm.estimator
    C, W = est.in_channels, est.cond_projection.in_features
    style_dim = est.cond_x_merge_linear.in_features - 2 * C - est.transformer.layers[0].attention.wo.weight.shape[0]
    g, T = torch.Generator().manual_seed(0), 60
    x, prompt_x = torch.randn(2, C, T, generator=g), torch.randn(2, C, T, generator=g)
    mu, style, t = torch.randn(2, T, W, generator=g), torch.randn(2, style_dim, generator=g), torch.tensor([0.3, 0.6])
    assert est.head_context() > 0
    for lens in (T, T - 7):
        full = est(x, prompt_x, torch.tensor([lens]), t, style, mu)
        for first in (1, est.head_context(), 25, T - 3, T - 1):
            part = est(x, prompt_x, torch.tensor([lens]), t, style, mu, from_frame=first)
            assert part.shape == (2, C, T - first)
            torch.testing.assert_close(part, full[..., first:], rtol=0, atol=2e-6)
        assert est(x, prompt_x, torch.tensor([lens]), t, style, mu, from_frame=T).shape == (2, C, 0)
    for bad in (-1, T + 1):
        with pytest.raises(OptionError, match="from_frame"):
            est(x, prompt_x, torch.tensor([T]), t, style, mu, from_frame=bad)


def test_real_layout_matches_official_listing(assets_dir, reference_root, tmp_path):
    folder = copy_folder(assets_dir, tmp_path)  # real config.yaml, no overrides -> real hard-coded widths
    with torch.device("meta"):
        model = S2Mel.build(folder)
    ours = {f"net.{m}.{k}": (tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for m in MODULES for k, v in getattr(model, m).state_dict().items()}
    assert ours == read_listing(reference_root / "state_dict_real_s2mel.txt")


def _write(folder, net):
    torch.save({"net": net}, folder.root / "s2mel.pth")


@pytest.mark.parametrize("damage, message", [
    ("missing", "missing key estimator.conv2.bias"),
    ("extra", "unexpected key model.99.weight"),
    ("shape", r"key 2.weight: checkpoint shape"),
    ("module", "net.gpt_layer is missing"),
])
def test_strict_loading_refuses_bad_checkpoints(tiny_dir, tmp_path, damage, message):
    folder = copy_folder(tiny_dir, tmp_path)
    net = torch.load(tiny_dir / "s2mel.pth", weights_only=True)["net"]
    if damage == "missing":
        del net["cfm"]["estimator.conv2.bias"]
    elif damage == "extra":
        net["length_regulator"]["model.99.weight"] = torch.zeros(1)
    elif damage == "shape":
        net["gpt_layer"]["2.weight"] = net["gpt_layer"]["2.weight"][:-1]
    else:
        del net["gpt_layer"]
    _write(folder, net)
    with pytest.raises(CheckpointError, match=message):
        S2Mel.from_folder(folder)


def test_module_prefix_is_stripped_like_the_official_loader(tiny_dir, tmp_path, tiny_s2mel):
    folder = copy_folder(tiny_dir, tmp_path)
    net = torch.load(tiny_dir / "s2mel.pth", weights_only=True)["net"]
    net["gpt_layer"] = {f"module.{k}": v for k, v in net["gpt_layer"].items()}
    _write(folder, net)
    x = torch.randn(1, 3, folder.overrides.s2mel_gpt_layer.in_features)
    assert torch.equal(S2Mel.from_folder(folder).gpt_layer(x), tiny_s2mel.gpt_layer(x))


def test_random_checkpoint_has_the_official_layout(tiny_dir, tmp_path):
    folder = copy_folder(tiny_dir, tmp_path)
    write_random_checkpoint(folder, seed=3)
    ours = torch.load(tmp_path / "s2mel.pth", weights_only=True)
    official = torch.load(tiny_dir / "s2mel.pth", weights_only=True)
    assert list(ours) == ["net"] and set(ours["net"]) == set(MODULES)
    for m in MODULES:
        assert {k: v.shape for k, v in ours["net"][m].items()} == {k: v.shape for k, v in official["net"][m].items()}
    # deterministic buffers as in the official files: positions exact, the frequencies (torch.exp, whose last bit
    # depends on the instruction set it runs with) within one rounding step
    assert torch.equal(ours["net"]["cfm"]["estimator.input_pos"], official["net"]["cfm"]["estimator.input_pos"])
    for key in ("estimator.t_embedder.freqs", "estimator.t_embedder2.freqs"):
        a, b = ours["net"]["cfm"][key], official["net"]["cfm"][key]
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, key
        assert bool(((a - b).abs() <= b.abs() * 2.0 ** -23).all()), key
    model = S2Mel.from_folder(folder)
    W = folder.config.s2mel.length_regulator.in_channels
    cond = model.length_regulator(torch.randn(1, 7, W), torch.tensor([12]))
    mel = model.cfm.inference(cond, torch.tensor([12]), torch.randn(1, 80, 4), torch.randn(1, 192), 2,
                              generator=torch.Generator().manual_seed(0))
    assert mel.shape == (1, 80, 12) and bool(torch.isfinite(mel).all())
