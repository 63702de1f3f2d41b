"""S2Mel: GPT latent -> semantic space (`gpt_layer`), the length regulator, and conditional flow matching
with the DiT estimator (SPEC-s2mel.md 4.9, 4.10, 4.12, 6). Official source: `indextts/s2mel/modules/
commons.py` (MyModel, load_checkpoint2), `length_regulator.py`, `flow_matching.py`.

What the pipeline calls (infer_v2 order):

    s2mel = S2Mel.from_folder(folder)                        # strict per-module load, eval()
    prompt_condition = s2mel.length_regulator(S_ref, torch.tensor([T_mel]))    # (1, T_mel, C)
    S_infer = vq2emb(codes).transpose(1, 2) + s2mel.gpt_layer(latent)         # (1, N_c, W)
    cond = s2mel.length_regulator(S_infer, torch.tensor([target_length(N_c)])) # (1, T_tgt, C)
    mel = s2mel.cfm.inference(torch.cat([prompt_condition, cond], 1), x_lens, ref_mel, style, n_steps,
                              cfg_rate=0.7, noise=None, generator=None)        # (1, 80, T_mel + T_tgt)
    vc_target = mel[:, :, T_mel:]                             # the prompt part is exactly 0

The file `s2mel.pth` is `{'net': {'cfm': sd, 'length_regulator': sd, 'gpt_layer': sd}}`. The official
loader skips unknown or mis-shaped keys silently; we load every module strictly instead (a missing, extra
or mis-shaped key is refused, naming it). Unused shipped weights are kept as parameters so the file loads
strictly: the DiT's `x_embedder`, `cond_embedder`, `content_mask_embedder`, `input_pos` (see dit.py) and
the regulator's `embedding` and `mask_token`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import fold_weight_norm, load_strict, load_torch_file
from ..config import GPTLayerWidths, LengthRegulatorSettings, ModelFolder, S2MelSettings
from ..errors import CheckpointError, ModelFolderError, OptionError
from .dit import DiT, sequence_mask

MODULES = ("cfm", "length_regulator", "gpt_layer")


def target_length(code_len: int) -> int:
    """Mel frames for N_c codes: official `(code_lens * 1.72).long()`, an int64 tensor times a Python float,
    i.e. a float32 product, truncated."""
    return int((torch.tensor([int(code_len)], dtype=torch.int64) * 1.72).long()[0])


def build_gpt_layer(widths: GPTLayerWidths) -> nn.Sequential:
    """Linear chain in -> hidden... -> out, no activations (official: 1280 -> 256 -> 128 -> 1024, hard-coded;
    the widths come from folder.overrides.s2mel_gpt_layer)."""
    sizes = [widths.in_features, *widths.hidden, widths.out_features]
    return nn.Sequential(*(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])))


class LengthRegulator(nn.Module):
    """Official `InterpolateRegulator` for continuous input: Linear in_channels -> channels, nearest resize
    to max(ylens) frames, [Conv1d(k 3) -> GroupNorm(1 group) -> Mish] × len(sampling_ratios), Conv1d(k 1),
    length mask. `embedding` and `mask_token` are shipped but unused."""

    def __init__(self, cfg: LengthRegulatorSettings):
        super().__init__()
        unsupported = [name for name, ok in [
            ("is_discrete false", not cfg.is_discrete), ("vector_quantize false", not cfg.vector_quantize),
            ("n_codebooks 1", cfg.n_codebooks == 1), ("f0_condition false", not cfg.f0_condition),
            ("non-empty sampling_ratios", len(cfg.sampling_ratios) > 0)] if not ok]
        if unsupported:
            raise ModelFolderError("config.yaml s2mel.length_regulator: only the official inference configuration "
                                   "is supported; needs " + ", ".join(unsupported))
        C = cfg.channels
        layers: list[nn.Module] = []
        for _ in cfg.sampling_ratios:
            layers += [nn.Conv1d(C, C, 3, 1, 1), nn.GroupNorm(1, C), nn.Mish()]
        layers.append(nn.Conv1d(C, C, 1, 1))
        self.model = nn.Sequential(*layers)
        self.embedding = nn.Embedding(cfg.content_codebook_size, C)  # unused
        self.mask_token = nn.Parameter(torch.zeros(1, C))  # unused
        self.content_in_proj = nn.Linear(cfg.in_channels, C)

    def forward(self, x: Tensor, ylens: Union[Tensor, int]) -> Tensor:
        """x (B, T_in, in_channels), ylens (B,) target frame counts -> (B, max(ylens), channels), frames past
        each ylen zeroed. (The official returns a tuple whose element 0 is this tensor.)"""
        ylens = torch.as_tensor(ylens, device=x.device).reshape(-1)
        n_out = int(ylens.max())
        x = self.content_in_proj(x)
        # nearest: source index floor(i * float32(T_in / T_out)) computed in float32, as F.interpolate does
        x = F.interpolate(x.transpose(1, 2).contiguous(), size=n_out, mode="nearest")
        out = self.model(x).transpose(1, 2)
        return out * sequence_mask(ylens, n_out).unsqueeze(-1)


class FlowMatching(nn.Module):
    """Official `CFM`: Euler solver of the flow ODE with classifier-free guidance (SPEC-s2mel.md 4.12)."""

    def __init__(self, cfg: S2MelSettings):
        super().__init__()
        self.in_channels = cfg.DiT.in_channels
        self.estimator = DiT(cfg)

    @torch.inference_mode()
    def inference(self, mu: Tensor, x_lens: Union[Tensor, int], prompt: Tensor, style: Tensor, n_steps: int,
                  cfg_rate: float = 0.7, noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
                  temperature: float = 1.0) -> Tensor:
        """mu (1, T, C) content, x_lens (1,) = [T], prompt (1, 80, T_p) reference mel, style (1, 192).

        Returns the mel (1, 80, T) whose first T_p frames are exactly 0 (infer_v2 keeps [:, :, T_p:]).
        `noise` (1, 80, T) replaces the official `torch.randn` draw (then × temperature, as the draw is; its
        prompt frames are ignored; the tensor is not modified); without it the draw uses `generator`, or the
        global RNG like the official code. The official infer_v2 hard-codes n_steps 25 and cfg_rate 0.7. cfg_rate > 0 runs the
        conditional and the unconditional (all-zero prompt, style and content) estimates as one batch of two.
        `begin` + `advance` until `Euler.done`: the same, one step at a time (a scheduler interleaves requests).
        """
        state = self.begin(mu, x_lens, prompt, style, n_steps, cfg_rate, noise, generator, temperature)
        while not state.done:
            self.advance(state)
        return state.x

    def begin(self, mu: Tensor, x_lens: Union[Tensor, int], prompt: Tensor, style: Tensor, n_steps: int,
              cfg_rate: float = 0.7, noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None,
              temperature: float = 1.0) -> "Euler":
        """Check the inputs, draw the starting noise: an `Euler` state at step 0 (arguments as `inference`)."""
        if n_steps < 1:
            raise OptionError(f"diffusion steps must be >= 1, got {n_steps}")
        if cfg_rate < 0:
            raise OptionError(f"cfg_rate must be >= 0, got {cfg_rate}")
        B, T = mu.shape[0], mu.shape[1]
        shape = (B, self.in_channels, T)
        prompt_len = prompt.shape[-1]
        if prompt_len > T:
            raise OptionError(f"prompt mel has {prompt_len} frames but the content has only {T}")
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise OptionError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
            z = noise.to(device=mu.device, dtype=mu.dtype)
        elif generator is not None:
            z = torch.randn(shape, generator=generator, device=generator.device).to(mu.device, mu.dtype)
        else:
            z = torch.randn(shape, device=mu.device, dtype=mu.dtype)
        x = z * temperature
        x_lens = torch.as_tensor(x_lens, device=mu.device).reshape(-1)
        prompt_x = torch.zeros_like(x)
        prompt_x[..., :prompt_len] = prompt
        x[..., :prompt_len] = 0
        if cfg_rate > 0:  # the constant halves of the CFG batch, built once
            prompt_x = torch.cat([prompt_x, torch.zeros_like(prompt_x)])
            style = torch.cat([style, torch.zeros_like(style)])
            mu = torch.cat([mu, torch.zeros_like(mu)])
        t_span = torch.linspace(0, 1, n_steps + 1, device=mu.device)
        return Euler(x, prompt_x, x_lens, style, mu, prompt_len, cfg_rate, t_span, t_span[0])

    def advance(self, s: "Euler") -> None:
        """One Euler step of the flow (the official update is x = x + dt·v, then x[..., :prompt_len] = 0: the
        prompt frames stay 0 and their velocity is never used, so only the other frames' is computed:
        DiT.forward's from_frame)."""
        s.step += 1
        dt = s.t_span[s.step] - s.t_span[s.step - 1]
        B = s.x.shape[0]
        if s.cfg_rate > 0:
            v = self.estimator(torch.cat([s.x, s.x]), s.prompt_x, s.x_lens, s.t.expand(2 * B), s.style, s.mu,
                               s.prompt_len)
            v_cond, v_uncond = v.chunk(2, dim=0)
            v = (1.0 + s.cfg_rate) * v_cond - s.cfg_rate * v_uncond
        else:
            v = self.estimator(s.x, s.prompt_x, s.x_lens, s.t.unsqueeze(0), s.style, s.mu, s.prompt_len)
        s.x[..., s.prompt_len:] += dt * v
        s.t = s.t + dt  # accumulated in float32, not read from t_span (official)


@dataclass
class Euler:
    """The flow's state between two steps: x (B, 80, T) at time t after `step` of len(t_span) - 1 steps, and
    the constant inputs of every step (the CFG batch's halves included)."""

    x: Tensor
    prompt_x: Tensor
    x_lens: Tensor
    style: Tensor
    mu: Tensor
    prompt_len: int
    cfg_rate: float
    t_span: Tensor
    t: Tensor
    step: int = 0

    @property
    def done(self) -> bool:
        return self.step == len(self.t_span) - 1


class S2Mel(nn.Module):
    """The three modules of s2mel.pth: `cfm` (FlowMatching with the DiT), `length_regulator`, `gpt_layer`."""

    def __init__(self, cfg: S2MelSettings, gpt_layer_widths: GPTLayerWidths):
        super().__init__()
        if cfg.DiT.content_dim != cfg.length_regulator.channels:
            raise ModelFolderError(f"s2mel.DiT.content_dim ({cfg.DiT.content_dim}) must equal "
                                   f"s2mel.length_regulator.channels ({cfg.length_regulator.channels})")
        if gpt_layer_widths.out_features != cfg.length_regulator.in_channels:
            raise ModelFolderError(f"gpt_layer output width {gpt_layer_widths.out_features} must equal "
                                   f"s2mel.length_regulator.in_channels ({cfg.length_regulator.in_channels})")
        self.cfm = FlowMatching(cfg)
        self.length_regulator = LengthRegulator(cfg.length_regulator)
        self.gpt_layer = build_gpt_layer(gpt_layer_widths)

    @classmethod
    def build(cls, folder: ModelFolder) -> "S2Mel":
        """Our module in the official on-disk layout (weight norm not folded), from config + overrides."""
        return cls(folder.config.s2mel, folder.overrides.s2mel_gpt_layer)

    @classmethod
    def from_folder(cls, folder: ModelFolder) -> "S2Mel":
        path = folder.s2mel_checkpoint
        with torch.device("meta"):
            model = cls.build(folder)
        model.load_official(load_torch_file(path), path)
        fold_weight_norm(model)
        return model.requires_grad_(False).eval()

    def load_official(self, data: object, source) -> "S2Mel":
        """Load `{'net': {module: state_dict}}` strictly, module by module (a leading `module.` is stripped
        from keys, as the official loader does)."""
        net = data.get("net") if isinstance(data, dict) else None
        if not isinstance(net, dict):
            found = f"keys {list(data)[:5]}" if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"{source}: expected {{'net': {{'cfm', 'length_regulator', 'gpt_layer'}}}}, "
                                  f"found {found}")
        for name in MODULES:
            if not isinstance(net.get(name), dict):
                raise CheckpointError(f"{source}: net.{name} is missing (found net keys {sorted(net)})")
            state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in net[name].items()}
            load_strict(getattr(self, name), state, f"{source} [net.{name}]")
        return self


def write_random_checkpoint(folder: ModelFolder, seed: int) -> None:
    """s2mel.pth with seeded random weights in the official layout (deterministic buffers kept exact)."""
    from ..checkpoint import randomize_

    model = S2Mel.build(folder)
    randomize_(model, seed)
    net = {name: {k: v.contiguous() for k, v in getattr(model, name).state_dict().items()} for name in MODULES}
    torch.save({"net": net}, folder.root / folder.config.s2mel_checkpoint)
