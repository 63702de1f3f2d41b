"""The Conformer encoder of IndexTTS2's GPT conditioning (`conditioning_encoder`, `emo_conditioning_encoder`).

A WeNet-style Conformer as the official code configures it: `conv2d2` subsampling, the "rel_pos" attention
*without* the Transformer-XL shift, pre-norm blocks (attention, convolution module, one feed-forward), SiLU,
no macaron half-step, LayerNorm in the convolution module. SPEC-gpt §3. State-dict keys are the official ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PE_ROWS = 5000  # rows of the sinusoid table the official code registers (a persistent buffer)


def sinusoid_table(rows: int, dim: int) -> torch.Tensor:
    """(1, rows, dim) table: pe[p, 2i] = sin(p·w_i), pe[p, 2i+1] = cos(p·w_i), w_i = exp(-2i·ln(1e4)/dim)."""
    position = torch.arange(0, rows).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2) * -(math.log(10000.0) / dim))
    pe = torch.zeros(rows, dim)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe.unsqueeze(0)


class PositionTable(nn.Module):
    """Holds the `pe` buffer (key `embed.pos_enc.pe`); only its first T' rows are used, as absolute positions."""

    def __init__(self, dim: int, rows: int = PE_ROWS):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(rows, dim))

    def forward(self, length: int) -> torch.Tensor:
        if length >= self.pe.shape[1]:
            raise ValueError(f"{length} subsampled frames exceed the {self.pe.shape[1]}-row position table")
        return self.pe[:, :length]


class Conv2dSubsampling2(nn.Module):
    """(B, T, W) -> (B, T', C), T' = (T - 1) // 2: Conv2d 1->C (3x3, stride 2) + ReLU, flatten channel-major, Linear."""

    def __init__(self, input_size: int, channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(channels * ((input_size - 1) // 2), channels))
        self.pos_enc = PositionTable(channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        linear = self.out[0]
        if linear.weight.dtype == torch.bfloat16:  # a bf16 stage: see _frequency_major
            return self._frequency_major(x, mask)
        x = self.conv(x.unsqueeze(1))                      # (B, C, T', F)
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        # rel_pos flavour: scale by sqrt(C), no positional encoding added; the table goes to attention.
        x = x * math.sqrt(c)
        # Output frame i keeps input frame 2i + 2's validity (the official `mask[:, :, 2::2]`).
        return x, self.pos_enc(t), mask[:, :, 2::2]


    def _frequency_major(self, x: torch.Tensor, mask: torch.Tensor):
        """The same subsampling for bf16 weights without the (C, T', F) -> (T', C·F) transposition of a ~50 MB
        activation: the 3x3 stride-2 convolution is one product of the (T'·F, 9) patches with the (C, 9)
        kernel, whose (T'·F, C) result is already frequency-major, and the Linear's columns are permuted once
        to that (F, C) order (kept while the weight is unchanged), so the flatten is a view. Same sums in
        another order; the fp32 path keeps the official layout."""
        conv, linear = self.conv[0], self.out[0]
        c = conv.out_channels
        patches = x.unfold(1, 3, 2).unfold(2, 3, 2)           # (B, T', F, 3, 3)
        b, t, f = patches.shape[:3]
        h = F.linear(patches.reshape(b, t * f, 9), conv.weight.view(c, 9), conv.bias).relu_()
        w = linear.weight
        key = (w.data_ptr(), None if w.is_inference() else w._version)
        if getattr(self, "_permuted_key", None) != key:
            self._permuted = w.view(-1, c, f).transpose(1, 2).reshape(w.shape[0], -1)
            self._permuted_key = key
        x = F.linear(h.view(b, t, f * c), self._permuted, linear.bias)
        return x * math.sqrt(c), self.pos_enc(t), mask[:, :, 2::2]


class RelPositionAttention(nn.Module):
    """Multi-head attention with learned biases u, v and a position term, WITHOUT the relative shift.

    Official quirk (SPEC-gpt §15.10): score = ((q + u)·k_j + (q + v)·p_j) / sqrt(d) where p_j is the projected
    *absolute* sinusoid of key position j (no rel_shift), padded keys -inf before softmax and 0 after it.
    """

    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.head_dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, H, d)
        return x.view(x.shape[0], -1, self.heads, self.head_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = self._split(self.linear_q(x))
        k = self._split(self.linear_k(x)).transpose(1, 2)
        v = self._split(self.linear_v(x)).transpose(1, 2)
        p = self._split(self.linear_pos(pos)).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        scores = (content + position) / math.sqrt(self.head_dim)
        padded = ~key_mask.unsqueeze(1)                    # (B, 1, 1, T')
        attn = torch.softmax(scores.masked_fill(padded, -math.inf), dim=-1).masked_fill(padded, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(x.shape[0], -1, self.heads * self.head_dim)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConvolutionModule(nn.Module):
    """Pointwise conv -> GLU -> depthwise conv (15) -> LayerNorm -> SiLU -> pointwise conv; pads zeroed."""

    def __init__(self, channels: int, kernel_size: int = 15):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2,
                                        groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2).masked_fill(~frame_mask, 0.0)  # (B, C, T'), frame_mask (B, 1, T')
        x = F.glu(self.pointwise_conv1(x), dim=1)
        x = self.depthwise_conv(x)
        x = F.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pointwise_conv2(x).masked_fill(~frame_mask, 0.0)
        return x.transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, linear_units: int):
        super().__init__()
        self.self_attn = RelPositionAttention(heads, dim)
        self.feed_forward = FeedForward(dim, linear_units)
        self.conv_module = ConvolutionModule(dim)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-5)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-5)
        self.norm_conv = nn.LayerNorm(dim, eps=1e-5)
        self.norm_final = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), mask, pos)
        x = x + self.conv_module(self.norm_conv(x), mask)
        x = x + self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """(B, T, W) features and lengths (B,) -> (B, T', C) states and the key mask (B, 1, T').

    Padded output frames are not zero; callers exclude them with the returned mask.
    """

    def __init__(self, input_size: int, output_size: int, attention_heads: int, linear_units: int,
                 num_blocks: int, input_layer: str = "conv2d2"):
        super().__init__()
        if input_layer != "conv2d2":
            raise ValueError(f"only the conv2d2 input layer of IndexTTS2 is implemented, not {input_layer!r}")
        self.embed = Conv2dSubsampling2(input_size, output_size)
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)
        self.encoders = nn.ModuleList(
            ConformerBlock(output_size, attention_heads, linear_units) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames = torch.arange(x.shape[1], device=x.device)
        mask = (frames[None, :] < lengths.to(x.device)[:, None]).unsqueeze(1)  # (B, 1, T)
        x, pos, mask = self.embed(x, mask)
        for block in self.encoders:
            x = block(x, mask, pos)
        return self.after_norm(x), mask
