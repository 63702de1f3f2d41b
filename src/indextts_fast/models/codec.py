"""MaskGCT semantic codec (`RepCodec`, one factorised vector quantiser): SPEC-s2mel.md 4.7.

`quantize(spk_cond_emb)` turns w2v-bert features (B, T, W) into codes (B, T) and their embeddings S_ref
(B, T, W); `vq2emb(codes)` embeds GPT codes, (B, W, T). Keys are those of the official
`semantic_codec_model.safetensors` (flat safetensors, `encoder.*`, `decoder.*`, `quantizer.quantizers.0.*`).
The decoder is only part of the file: it is checked when loading and then dropped (never used at inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import fold_weight_norm, load_safetensors_file, load_strict, weight_norm_layout
from ..config import ModelFolder, SemanticCodecSettings
from ..errors import ModelFolderError


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k 7) -> LayerNorm -> Linear -> GELU (erf) -> Linear -> per-channel scale, + residual."""

    def __init__(self, dim: int, intermediate: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.norm(self.dwconv(x).transpose(1, 2))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.transpose(1, 2)


class VocosBackbone(nn.Module):
    """(B, C_in, T) -> (B, T, dim): Conv1d(k 7) -> LayerNorm -> ConvNeXt blocks -> LayerNorm (eps 1e-6)."""

    def __init__(self, in_channels: int, dim: int, intermediate: int, layers: int):
        super().__init__()
        self.embed = nn.Conv1d(in_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate) for _ in range(layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class FactorizedVQ(nn.Module):
    """Projection to codebook_dim (weight-normed 1x1 conv), nearest code by cosine distance, projection back."""

    def __init__(self, width: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        if width == codebook_dim:
            raise ModelFolderError("semantic_codec: hidden_size == codebook_dim (no projections) is not supported")
        self.in_project = weight_norm_layout(nn.Conv1d(width, codebook_dim, kernel_size=1))
        self.out_project = weight_norm_layout(nn.Conv1d(codebook_dim, width, kernel_size=1))
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Codes (B, T) of z_e (B, d, T): argmax of −‖ê − ĉ‖² with L2-normalised vectors (first index on ties)."""
        e = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))
        c = F.normalize(self.codebook.weight)
        dist = e.pow(2).sum(1, keepdim=True) - 2 * e @ c.t() + c.pow(2).sum(1, keepdim=True).t()
        return (-dist).max(1)[1].reshape(z_e.shape[0], -1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) codebook rows, (B, d, T)."""
        return F.embedding(codes, self.codebook.weight).transpose(1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_e = self.in_project(z)
        codes = self.nearest(z_e)
        z_q = self.embed(codes)
        z_q = z_e + (z_q - z_e)  # the official straight-through form (moves z_q by up to one rounding)
        return self.out_project(z_q), codes


class ResidualVQ(nn.Module):
    """Holds the quantisers (`quantizer.quantizers.<i>`); the semantic codec has exactly one."""

    def __init__(self, width: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.quantizers = nn.ModuleList([FactorizedVQ(width, codebook_size, codebook_dim)])


class SemanticCodec(nn.Module):
    def __init__(self, cfg: SemanticCodecSettings):
        super().__init__()
        extra = cfg.model_extra or {}
        if int(extra.get("num_quantizers", 1)) != 1 or int(extra.get("downsample_scale", 1) or 1) > 1:
            raise ModelFolderError("semantic_codec: only num_quantizers 1 and downsample_scale 1 are supported "
                                   "(the IndexTTS2 configuration)")

        def backbone():
            return nn.Sequential(VocosBackbone(cfg.hidden_size, cfg.vocos_dim, cfg.vocos_intermediate_dim,
                                               cfg.vocos_num_layers), nn.Linear(cfg.vocos_dim, cfg.hidden_size))

        self.encoder = backbone()
        self.decoder = backbone()  # in the file, unused at inference
        self.quantizer = ResidualVQ(cfg.hidden_size, cfg.codebook_size, cfg.codebook_dim)

    @classmethod
    def from_folder(cls, folder: ModelFolder) -> "SemanticCodec":
        with torch.device("meta"):
            model = cls(folder.config.semantic_codec)
        path = folder.aux("semantic_codec")
        load_strict(model, load_safetensors_file(path), path)
        del model.decoder
        fold_weight_norm(model.quantizer)  # W = g·v/‖v‖ once, as the weight_norm hook computes it per call
        return model.eval()

    @property
    def vq(self) -> FactorizedVQ:
        return self.quantizer.quantizers[0]

    @torch.no_grad()
    def encode(self, feats: torch.Tensor) -> torch.Tensor:
        """The encoder output (B, T, W) of w2v-bert features (B, T, W), before the quantiser."""
        return self.encoder(feats.transpose(1, 2))

    @torch.no_grad()
    def quantize(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`RepCodec.quantize`: (codes (B, T) int64, S_ref (B, T, W))."""
        out, codes = self.vq(self.encode(feats).transpose(1, 2))
        return codes, out.transpose(1, 2)

    @torch.no_grad()
    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """`quantizer.vq2emb(codes.unsqueeze(1))` for codes (B, T): (B, W, T). (The official loop indexes the
        batch axis with the quantiser number, which is only right for B = 1; this is the intended result.)"""
        return self.vq.out_project(self.vq.embed(codes))


def write_random_checkpoint(folder: ModelFolder, seed: int) -> None:
    """hf_cache/semantic_codec_model.safetensors with random weights (flat keys, as the official file)."""
    from safetensors.torch import save_file

    from ..checkpoint import randomize_

    model = SemanticCodec(folder.config.semantic_codec)
    randomize_(model, seed)
    out = folder.root / "hf_cache" / "semantic_codec_model.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
