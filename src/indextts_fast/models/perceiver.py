"""The Perceiver resampler of IndexTTS2's GPT conditioning (`perceiver_encoder`, `emo_perceiver_encoder`).

Learned latents cross-attend (no pre-norm) to [latents ; context], then a GEGLU feed-forward, twice; an
RMS-style output norm. SPEC-gpt §4. State-dict keys are the official ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Queries from the latents, keys/values from [latents ; context]; heads of `head_dim` (64 officially)."""

    def __init__(self, dim: int, heads: int, head_dim: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, H·d) -> (B, H, N, d)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self._heads(self.to_q(latents))
        k, v = map(self._heads, self.to_kv(torch.cat((latents, context), dim=1)).chunk(2, dim=-1))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.head_dim ** -0.5
        if mask is not None:
            # Official quirk: masked keys get -(largest finite float), not -inf (SPEC-gpt §15.10).
            scores = scores.masked_fill(~mask[:, None, None, :], -torch.finfo(scores.dtype).max)
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.to_out(out.transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * x


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    inner = int(dim * mult * 2 / 3)  # evaluated in floating point and truncated, as the official code does
    return nn.Sequential(nn.Linear(dim, inner * 2), GEGLU(), nn.Linear(inner, dim))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class PerceiverResampler(nn.Module):
    """Context (B, T', C) and key mask (B, n + T') -> (B, n, dim)."""

    def __init__(self, dim: int, dim_context: int, num_latents: int, heads: int, ff_mult: float,
                 depth: int = 2, head_dim: int = 64):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(num_latents, dim))
        self.proj_context = nn.Linear(dim_context, dim) if dim_context != dim else nn.Identity()
        self.layers = nn.ModuleList(
            nn.ModuleList([CrossAttention(dim, heads, head_dim), feed_forward(dim, ff_mult)]) for _ in range(depth))
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        context = self.proj_context(context)
        latents = self.latents.unsqueeze(0).expand(context.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = attn(latents, context, mask) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
