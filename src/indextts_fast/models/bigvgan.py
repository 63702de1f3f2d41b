"""BigVGAN v2 vocoder (nvidia/bigvgan_v2_22khz_80band_256x), SPEC-s2mel.md 4.14.

Official source: `indextts/s2mel/modules/bigvgan/bigvgan.py`, `activations.py` and the torch path of
`alias_free_activation/torch/*` (the CUDA kernel is never used on CPU).

The folder holds `hf_cache/bigvgan/config.json` and `bigvgan_generator.pt` = `{'generator': state_dict}`
with weight norm (`weight_g`/`weight_v`). `BigVGAN.from_folder` builds the model from config.json, loads it
strictly (keys exactly the official ones; a weight-norm-free file is accepted too, as the official
fallback does), folds weight norm (= the official `remove_weight_norm()`), and sets eval().

    wav = bigvgan(mel)   # mel (B, num_mels, T) -> (B, 1, prod(upsample_rates)·T) in [-1, 1] (clamp, or tanh
                         # when config.json says use_tanh_at_final); infer_v2 then scales by 32767 and clamps

Inference only: the activations write into preallocated buffers under torch.no_grad().

The anti-aliased activation (×2 up-sampling, Snake/SnakeBeta, ×2 down-sampling, 12-tap Kaiser-sinc
filters loaded from the checkpoint, replicate padding) is computed with block-Toeplitz matrix products,
see `AntiAliasedActivation`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from ..checkpoint import fold_weight_norm, load_strict, load_torch_file, state_dict_mismatches, weight_norm_layout
from ..config import ModelFolder
from ..errors import CheckpointError, ModelFolderError
from ..kernels import ops
from .timemajor import conv1d_time_major

FILTER_TAPS = 12  # official Activation1d: up/down kernel 12, ratio 2


class BigVGANConfig(BaseModel):
    """The fields of the official config.json the generator reads (training keys are kept, unused)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    num_mels: int
    upsample_rates: list[int]
    upsample_kernel_sizes: list[int]
    upsample_initial_channel: int
    resblock: str = "1"
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True  # official defaults when the key is absent
    use_bias_at_final: bool = True

    @classmethod
    def from_file(cls, path: Path) -> "BigVGANConfig":
        try:
            cfg = cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise ModelFolderError(f"{path} is not a valid BigVGAN config.json: {exc}") from exc
        if cfg.resblock != "1":  # the official AMPBlock2.forward returns None: such a config cannot run
            raise ModelFolderError(f"{path}: resblock {cfg.resblock!r} is not supported (only \"1\"; the official "
                                   "AMPBlock2 is broken)")
        if cfg.activation not in ("snake", "snakebeta"):
            raise ModelFolderError(f"{path}: activation must be 'snake' or 'snakebeta', got {cfg.activation!r}")
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes) or \
                len(cfg.resblock_kernel_sizes) != len(cfg.resblock_dilation_sizes):
            raise ModelFolderError(f"{path}: upsample_rates/upsample_kernel_sizes or resblock_kernel_sizes/"
                                   "resblock_dilation_sizes differ in length")
        return cfg


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> Tensor:
    """The official low-pass (1, 1, taps): Kaiser-windowed sinc, normalised to sum 1. Only used to write
    random checkpoints: loaded models take the stored filters."""
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, beta=beta, periodic=False)
    time = torch.arange(-half, half) + 0.5 if taps % 2 == 0 else torch.arange(taps) - half
    filt = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (filt / filt.sum()).view(1, 1, taps)


class Snake(nn.Module):
    """Snake (x + sin²(αx)/α) or SnakeBeta (x + sin²(αx)/β), α, β per channel, log-scale when stored so."""

    def __init__(self, channels: int, beta: bool, logscale: bool):
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))
        if beta:
            self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))
        else:
            self.beta = None

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(α, 1/(β + 1e-9)) per channel, as the official forward computes them."""
        alpha = self.alpha
        beta = self.beta if self.beta is not None else self.alpha
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return alpha, 1.0 / (beta + 0.000000001)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, L) -> x + sin²(α·x)·(1/(β + 1e-9)) with the official rounding order."""
        alpha, inv_beta = (c[:, None] for c in self.coefficients())
        return torch.addcmul(x, torch.mul(x, alpha).sin_().square_(), inv_beta)


class _Filter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, FILTER_TAPS))


class _Downsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.lowpass = _Filter()


BLOCK = 16  # output samples per row of the block-Toeplitz matrices of the resamplers
CHUNK = 1 << 18  # up-sampled samples per group of channels in AntiAliasedActivation (~1 MB per signal)


def _fill_halos(h: Tensor, left: int, right: int) -> None:
    """h (R, n, left + block + right), block interiors written: copy each block's neighbouring samples into
    its halos; the first block's left halo repeats its first sample, the last block's right halo its last
    (every entry must be finite: a matrix product multiplies whole rows, and 0·inf = nan)."""
    block = h.shape[-1] - left - right
    h[:, 1:, :left] = h[:, :-1, block:block + left]
    h[:, 0, :left] = h[:, 0, left:left + 1]
    h[:, :-1, left + block:] = h[:, 1:, left:left + right]
    h[:, -1, left + block:] = h[:, -1, left + block - 1:left + block]


def _write_blocks(h: Tensor, x: Tensor, left: int, right: int) -> Tensor:
    """Fill h (R, n, left + block + right) with the consecutive blocks of x (R, L) and their `left` and
    `right` neighbours; samples before 0 / from L on repeat the first / last one (replicate padding)."""
    R, n, width = h.shape
    block, L = width - left - right, x.shape[1]
    inner = h[:, :, left:left + block]
    full, rem = divmod(L, block)
    inner[:, :full] = x[:, :full * block].view(R, full, block)
    if full < n:
        inner[:, full, :rem] = x[:, full * block:]
        inner[:, full, rem:] = x[:, L - 1:]
        inner[:, full + 1:] = x[:, L - 1:, None]
    _fill_halos(h, left, right)
    return h


class AntiAliasedActivation(nn.Module):
    """Official `Activation1d` (torch path): up-sample ×2 -> Snake -> down-sample ×2.

    Official ops: u = 2·conv_transpose1d(replicate_pad(x, 5, 5), f_up, stride 2)[15:-15];
    out = conv1d(replicate_pad(snake(u), 5, 6), f_down, stride 2), every channel with the same 12-tap
    filters. Both resamplers are the same sums of products computed as matrix products: the signal is cut
    into blocks of BLOCK samples with a few neighbours (halo) each, and one (rows × halo-block) @
    (halo-block × outputs) product applies the banded Toeplitz matrix of the filter to every block of
    every channel at once (depth-wise convolutions are slow on CPU, matrix products are not).
    """

    def __init__(self, channels: int, beta: bool, logscale: bool):
        super().__init__()
        self.act = Snake(channels, beta, logscale)
        self.upsample = _Filter()
        self.downsample = _Downsample()
        self._cache: tuple = ()

    def matrices(self) -> tuple[Tensor, Tensor]:
        """(BLOCK + 6, 2·BLOCK) up-sampling and (2·BLOCK + 10, BLOCK) down-sampling matrices, from the
        stored filters (cached while the filters are unchanged)."""
        up, down = self.upsample.filter.reshape(-1), self.downsample.lowpass.filter.reshape(-1)
        cached = self._cache
        if not (cached and cached[0].dtype == up.dtype and cached[0].device == up.device
                and torch.equal(cached[0], up) and torch.equal(cached[1], down)):
            self._cache = cached = (up.clone(), down.clone(), *_resampling_matrices(up, down))
        return cached[2], cached[3]

    def forward(self, x: Tensor) -> Tensor:
        return self.padded(x)[..., :x.shape[-1]]

    native = None  # the C kernel library, set by precision.prepare_vocoder_ for a reduced-precision vocoder

    def _kernel_filters(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """α and 1/β per channel, the up-sampling filter ×2 and the down-sampling filter: fp32, contiguous."""
        alpha, inv_beta = (c.float().contiguous() for c in self.act.coefficients())
        up = (2 * self.upsample.filter.reshape(-1)).float().contiguous()
        return alpha, inv_beta, up, self.downsample.lowpass.filter.reshape(-1).float().contiguous()

    def _padded_native(self, x: Tensor) -> Tensor:
        """`padded` as one C pass per channel row (kernels/native.c `itf_aa_snake`, fp32 arithmetic)."""
        B, C, T = x.shape
        n = -(-(T + 3) // BLOCK)
        alpha, inv_beta, up, down = self._kernel_filters()
        alpha, inv_beta = alpha.repeat(B), inv_beta.repeat(B)   # per row
        return ops.aa_snake(x.reshape(B * C, T), alpha, inv_beta, up, down, n * BLOCK).view(B, C, n * BLOCK)

    def time_major(self, x: Tensor) -> Tensor:
        """The activation of a bf16 time-major x (B, T, C) -> (B, T, C) bf16 (`itf_aa_snake_tm_bf16`: the
        same fp32 arithmetic, rounded once); needs `native` (a reduced-precision vocoder on the CPU)."""
        return ops.aa_snake_tm_bf16(x.contiguous(), *self._kernel_filters())

    @torch.no_grad()  # inference only (the kernels write into preallocated buffers)
    def padded(self, x: Tensor) -> Tensor:
        """x (B, C, T) -> (B, C, Tp), Tp >= T + 3: the activation, followed by Tp - T zeros (a 'same'
        convolution of this is the convolution of the activation, plus Tp - T samples to drop).

        Channels are processed in groups of about CHUNK up-sampled samples, so that the intermediate
        signals of a group stay in the CPU cache (3× faster than whole-tensor passes on long audio)."""
        if self.native is not None and x.dtype == torch.float32 and x.device.type == "cpu" and \
                self.upsample.filter.numel() == 12 and self.downsample.lowpass.filter.numel() == 12:
            return self._padded_native(x)
        B, C, T = x.shape
        R, n = B * C, -(-(T + 3) // BLOCK)  # >= 3 spare samples after T (right-edge fix below)
        m_up, m_down = self.matrices()
        alpha, inv_beta = (c.repeat(B)[:, None, None] for c in self.act.coefficients())  # per row
        rows = x.reshape(R, T)
        out = x.new_empty(R, n * BLOCK)
        g = max(1, min(R, CHUNK // (2 * n * BLOCK)))  # rows per group
        halo, up, tmp = x.new_empty(g, n, BLOCK + 6), x.new_empty(g, n, 2 * BLOCK), x.new_empty(g, n, 2 * BLOCK)
        z = x.new_empty(g, n, 2 * BLOCK + 10)  # down-sampler input: blocks of 2·BLOCK with 5-sample halos
        last_b, last_o = divmod(2 * T - 1, 2 * BLOCK)
        for r0 in range(0, R, g):
            k = min(g, R - r0)
            h, u, s, zk = halo[:k], up[:k], tmp[:k], z[:k]
            # up-sampled signal, blocks of 2·BLOCK: sample 2i+p of block b = sum_m w_p[m]·x[b·BLOCK + i + m - 3]
            _write_blocks(h, rows[r0:r0 + k], 3, 3)
            torch.mm(h.view(k * n, BLOCK + 6), m_up, out=u.view(k * n, 2 * BLOCK))
            # Snake u + sin²(α·u)/β (official rounding order), written into the interiors of z's blocks
            torch.mul(u, alpha[r0:r0 + k], out=s).sin_().square_()
            torch.addcmul(u, s, inv_beta[r0:r0 + k], out=zk[..., 5:5 + 2 * BLOCK])
            # the down-sampler's replicate padding: up-sampled samples 2T..2T+4 repeat sample 2T-1
            for q in range(2 * T, 2 * T + 5):
                b, o = divmod(q, 2 * BLOCK)
                zk[:, b, 5 + o] = zk[:, last_b, 5 + last_o]
            _fill_halos(zk, 5, 5)
            # out i = sum_k f_down[k]·z[2i + k - 5]
            torch.mm(zk.view(k * n, 2 * BLOCK + 10), m_down, out=out[r0:r0 + k].view(k * n, BLOCK))
        out[:, T:] = 0
        return out.view(B, C, n * BLOCK)


def _resampling_matrices(up: Tensor, down: Tensor) -> tuple[Tensor, Tensor]:
    """Banded Toeplitz matrices of the two 12-tap filters for blocks of BLOCK output samples."""
    taps, i = up.shape[0], torch.arange(BLOCK, device=up.device)
    up = 2 * up  # the official `ratio *` factor (×2 is exact in binary)
    zero = up.new_zeros(1)
    # even output i: sum_k up[2k+1]·x[i+2-k]; odd output i: sum_k up[2k]·x[i+3-k], as taps over x[i-3..i+3]
    w = torch.stack([torch.cat([up[1::2].flip(0), zero]), torch.cat([zero, up[0::2].flip(0)])])  # (2, 7)
    n = w.shape[1]
    m_up = up.new_zeros(BLOCK + n - 1, BLOCK, 2)
    m_up[i[:, None] + torch.arange(n, device=up.device), i[:, None].expand(BLOCK, n)] = w.t()
    m_down = down.new_zeros(2 * BLOCK + taps - 2, BLOCK)
    m_down[2 * i[:, None] + torch.arange(taps, device=up.device), i[:, None].expand(BLOCK, taps)] = down
    return m_up.view(BLOCK + n - 1, 2 * BLOCK), m_down


class AMPBlock1(nn.Module):
    """For each dilation d: x += conv2(act(conv1_d(act(x)))), convs weight-normed with "same" padding."""

    def __init__(self, channels: int, kernel: int, dilations: list[int], cfg: BigVGANConfig):
        super().__init__()

        def conv(d: int) -> nn.Conv1d:
            return weight_norm_layout(nn.Conv1d(channels, channels, kernel, dilation=d, padding=d * (kernel - 1) // 2))

        self.convs1 = nn.ModuleList(conv(d) for d in dilations)
        self.convs2 = nn.ModuleList(conv(1) for _ in dilations)
        self.activations = nn.ModuleList(
            AntiAliasedActivation(channels, cfg.activation == "snakebeta", cfg.snake_logscale)
            for _ in range(2 * len(dilations)))

    def forward(self, x: Tensor, time_major: bool = False) -> Tensor:
        """x (B, C, T); `time_major` (the bf16 kernel path, BigVGAN.time_major_ok): x (B, T, C) bf16."""
        if time_major:
            for j, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
                xt = conv1d_time_major(c1, self.activations[2 * j].time_major(x))
                x = conv1d_time_major(c2, self.activations[2 * j + 1].time_major(xt)) + x
            return x
        T = x.shape[-1]
        for j, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            # activations return zero-padded signals: the convs run on them and their first T samples are kept
            xt = c1(self.activations[2 * j].padded(x))[..., :T]
            x = c2(self.activations[2 * j + 1].padded(xt))[..., :T] + x
        return x


class BigVGAN(nn.Module):
    def __init__(self, cfg: BigVGANConfig):
        super().__init__()
        self.cfg = cfg
        C0 = cfg.upsample_initial_channel
        self.conv_pre = weight_norm_layout(nn.Conv1d(cfg.num_mels, C0, 7, 1, padding=3))
        self.ups = nn.ModuleList(
            nn.ModuleList([weight_norm_layout(nn.ConvTranspose1d(C0 // 2 ** i, C0 // 2 ** (i + 1), k, u,
                                                                 padding=(k - u) // 2))])
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            AMPBlock1(C0 // 2 ** (i + 1), k, d, cfg)
            for i in range(len(self.ups)) for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        ch = C0 // 2 ** len(self.ups)
        self.activation_post = AntiAliasedActivation(ch, cfg.activation == "snakebeta", cfg.snake_logscale)
        self.conv_post = weight_norm_layout(nn.Conv1d(ch, 1, 7, 1, padding=3, bias=cfg.use_bias_at_final))

    @property
    def hop_length(self) -> int:
        return math.prod(self.cfg.upsample_rates)

    def time_major_ok(self, mel: Tensor) -> bool:
        """Whether the time-major path runs: a bf16 vocoder on the CPU with the C kernels (set by
        precision.prepare_vocoder_) and the 12-tap resampling filters the kernel is written for."""
        act = self.activation_post
        return act.native is not None and mel.device.type == "cpu" and self.conv_pre.weight.dtype == torch.bfloat16 \
            and act.upsample.filter.numel() == 12 and act.downsample.lowpass.filter.numel() == 12

    def forward(self, mel: Tensor) -> Tensor:
        """mel (B, 80, frames) -> (B, 1, frames·hop). bf16 CPU stages run time-major (`time_major_ok`):
        channels-last convolutions and the activation kernel on (B, T, C), no layout changes in between."""
        tm = self.time_major_ok(mel)
        if tm:
            x = conv1d_time_major(self.conv_pre, mel.transpose(1, 2).contiguous().to(self.conv_pre.weight.dtype))
        else:
            x = self.conv_pre(mel)
        n = len(self.cfg.resblock_kernel_sizes)
        for i, (up,) in enumerate(self.ups):
            x = conv1d_time_major(up, x) if tm else up(x)
            xs = self.resblocks[i * n](x, tm)
            for j in range(1, n):
                xs += self.resblocks[i * n + j](x, tm)
            x = xs / n
        if tm:
            x = conv1d_time_major(self.conv_post, self.activation_post.time_major(x)).transpose(1, 2)
        else:
            x = self.conv_post(self.activation_post.padded(x))[..., :x.shape[-1]]
        return torch.tanh(x) if self.cfg.use_tanh_at_final else torch.clamp(x, min=-1.0, max=1.0)

    # ---- loading --------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: ModelFolder) -> "BigVGAN":
        directory = folder.aux("bigvgan")
        cfg = BigVGANConfig.from_file(_need(directory / "config.json", "the BigVGAN config.json"))
        path = _need(directory / "bigvgan_generator.pt", "the BigVGAN weights {'generator': state_dict}")
        data = load_torch_file(path)
        if not isinstance(data, dict) or not isinstance(data.get("generator"), dict):
            raise CheckpointError(f"{path}: expected {{'generator': state_dict}}, found "
                                  f"{list(data)[:5] if isinstance(data, dict) else type(data).__name__}")
        state = data["generator"]
        with torch.device("meta"):
            model = cls(cfg)
        if state_dict_mismatches(model, state) and not any(k.endswith("weight_g") for k in state):
            fold_weight_norm(model)  # official fallback: a checkpoint saved without weight norm
        load_strict(model, state, f"{path} [generator]")
        fold_weight_norm(model)
        return model.requires_grad_(False).eval()


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelFolderError(f"{path} not found: expected {what}")
    return path


# The published nvidia/bigvgan_v2_22khz_80band_256x config.json (training keys included, as shipped).
REAL_CONFIG = {
    "resblock": "1", "num_gpus": 0, "batch_size": 32, "learning_rate": 0.0001, "adam_b1": 0.8, "adam_b2": 0.99,
    "lr_decay": 0.9999996, "seed": 1234,
    "upsample_rates": [4, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False, "use_bias_at_final": False, "activation": "snakebeta", "snake_logscale": True,
    "use_cqtd_instead_of_mrd": True, "cqtd_filters": 128, "cqtd_max_filters": 1024, "cqtd_filters_scale": 1,
    "cqtd_dilations": [1, 2, 4], "cqtd_hop_lengths": [512, 256, 256], "cqtd_n_octaves": [9, 9, 9],
    "cqtd_bins_per_octaves": [24, 36, 48], "mpd_reshapes": [2, 3, 5, 7, 11], "use_spectral_norm": False,
    "discriminator_channel_mult": 1, "use_multiscale_melloss": True, "lambda_melloss": 15,
    "clip_grad_norm": 500, "segment_size": 65536, "num_mels": 80, "num_freq": 1025, "n_fft": 1024,
    "hop_size": 256, "win_size": 1024, "sampling_rate": 22050, "fmin": 0, "fmax": None, "fmax_for_loss": None,
    "normalize_volume": True, "num_workers": 4,
    "dist_config": {"dist_backend": "nccl", "dist_url": "tcp://localhost:54321", "world_size": 1},
}
TINY_INITIAL_CHANNEL = 64  # a tiny folder (one with tiny_overrides.json) gets the real layout, 64 channels wide


def write_random_checkpoint(folder: ModelFolder, seed: int, config: Optional[dict] = None) -> None:
    """hf_cache/bigvgan/{config.json, bigvgan_generator.pt} with seeded random weights, WITH weight norm,
    keys exactly as the official file; the resampling filters keep their exact values."""
    from ..checkpoint import randomize_

    if config is None:
        config = dict(REAL_CONFIG)
        if (folder.root / "tiny_overrides.json").exists():
            config["upsample_initial_channel"] = TINY_INITIAL_CHANNEL
    directory = folder.root / "hf_cache" / "bigvgan"
    directory.mkdir(parents=True, exist_ok=True)
    model = BigVGAN(BigVGANConfig.model_validate(config))
    randomize_(model, seed)  # Snake α, β (1-D, not scales) get 0.1·N(0, 1): log-scale values near 0
    (directory / "config.json").write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    torch.save({"generator": model.state_dict()}, directory / "bigvgan_generator.pt")
