"""IndexTTS2's GPT stage, `UnifiedVoice` v2 (official `indextts/gpt/model_v2.py`), as pure modules.

Speaker conditioning (Conformer + Perceiver, 32 latents), the emotion vector (emotion Conformer + 1-latent
Perceiver + two Linears), the speed embedding, text/mel embeddings with learned positions, a GPT-2 backbone
written here (HF `Conv1D` weight layout in the state dict), `gpt.ln_f` + `final_norm` and `mel_head`.
State-dict keys and order are exactly the official ones *before* `post_init_gpt2_config()`. SPEC-gpt.md.

Public API (what the pipeline calls; shapes for B = 1):
- `load_gpt(folder) -> UnifiedVoice` (strict keys; plain or {'model': sd} file; eval mode, no grad needed)
- `model.speaker_latent(spk_cond_emb (1,T,W)) -> (1, 32, D)`
- `model.merge_emovec(spk_cond_emb, emo_cond_emb, alpha) -> (1, D)`
- `model.latents(spk_latent, text_ids, codes, emovec) -> (1, N, D)` (the official `forward`, gpt_forward_time)
- generation lives in `indextts_fast.decoding` (`generate`, `trim_codes`), the emotion-vector mix in
  `indextts_fast.emotion`.
- `write_random_checkpoint(folder, seed)` for `make-checkpoint`.

The attention of the backbone is delegated to an `attend(layer, qkv)` callable, so that the plain causal
pass (latents), the prefill and the KV-cached decode step (decoding.py) share one set of blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_strict, load_torch_file
from ..config import GPTSettings, ModelFolder
from ..errors import CheckpointError, OptionError
from .conformer import ConformerEncoder, sinusoid_table
from .perceiver import PerceiverResampler

SPEAKER_LATENTS = 32          # `condition_num_latent` of the official constructor
EMO_PERCEIVER_WIDTH = 1024    # hard-coded width of the emotion perceiver / emovec_layer input (not overridden)
# Keys a model exposes after the official post_init_gpt2_config(): aliases of other tensors, skipped on load.
ALIAS_PREFIXES = ("inference_model.",)
ALIAS_KEYS = ("gpt.wte.weight",)

Attend = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, fused q|k|v (…, 3D)) -> (…, D)


# ---- GPT-2 backbone ----------------------------------------------------------------------------------

class Conv1D(nn.Module):
    """HF GPT-2 `Conv1D`: y = x·W + b with W stored (in, out) in the state dict.

    A swappable linear layer: the blocks only call `forward(x)`, so a later stage can replace one with a
    bf16/int8 module of the same contract. `fast_layout_()` (done by `load_gpt`) keeps the weight as the
    transposed view of a contiguous (out, in) tensor: the state dict still shows the official (in, out)
    tensor, and `F.linear` streams the weight once at full memory bandwidth for 1-3 rows, where MKL's
    addmm on the (in, out) layout drops to half speed as soon as there is more than one row.
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def fast_layout_(self) -> None:
        w = self.weight.detach()
        if w.is_meta or (w.stride(0) == 1 and w.stride(1) == w.shape[0]):
            return
        self.weight = nn.Parameter(w.t().contiguous().t(), requires_grad=self.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.t(), self.bias)


class GPT2Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.c_attn = Conv1D(dim, 3 * dim)
        self.c_proj = Conv1D(dim, dim)

    def forward(self, x: torch.Tensor, attend: Attend, layer: int) -> torch.Tensor:
        return self.c_proj(attend(layer, self.c_attn(x)))  # attend: fused (…, 3D) q|k|v -> (…, D)


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, 3D) fused projections -> q, k, v as (B, H, T, d) views."""
    b, t, _ = qkv.shape
    return tuple(y.view(b, t, heads, -1).transpose(1, 2) for y in qkv.chunk(3, dim=2))


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B, T, H·d)."""
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


class GPT2MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = Conv1D(dim, 4 * dim)
        self.c_proj = Conv1D(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # HF "gelu_new"


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = GPT2Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = GPT2MLP(dim)

    def forward(self, x: torch.Tensor, attend: Attend, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attend, layer)
        return x + self.mlp(self.ln_2(x))


class GPT2Backbone(nn.Module):
    """HF GPT2Model without token/position embeddings (the official code deletes wte and zeroes wpe)."""

    def __init__(self, dim: int, heads: int, layers: int):
        super().__init__()
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        for i, block in enumerate(self.h):
            x = block(x, attend, i)
        return self.ln_f(x)


def causal_attend(heads: int, mask: Optional[torch.Tensor] = None) -> Attend:
    """Full-sequence attention: causal, plus a boolean (T, T) `mask` (True = may attend) when given."""
    def attend(layer: int, qkv: torch.Tensor) -> torch.Tensor:
        q, k, v = split_heads(qkv, heads)
        if mask is None:
            return merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    return attend


class LearnedPositions(nn.Module):
    """`LearnedPositionEmbeddings`: key `<name>.emb.weight`."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.emb(positions)


# ---- UnifiedVoice ------------------------------------------------------------------------------------

class UnifiedVoice(nn.Module):
    """The GPT of IndexTTS2 built from the config's `gpt:` section and the conditioning input width W."""

    def __init__(self, cfg: GPTSettings, conditioning_input_dim: int = 1024):
        super().__init__()
        if cfg.condition_type != "conformer_perceiver":
            raise CheckpointError(f"only condition_type 'conformer_perceiver' (IndexTTS2) is implemented, "
                                  f"config.yaml has {cfg.condition_type!r}")
        if cfg.model_dim % cfg.heads:
            raise CheckpointError(f"gpt.model_dim {cfg.model_dim} is not divisible by gpt.heads {cfg.heads}")
        self.cfg = cfg
        self.conditioning_input_dim = conditioning_input_dim
        d, spk, emo = cfg.model_dim, cfg.condition_module, cfg.emo_condition_module
        # Registration order = the official state-dict order (state_dict_real.txt).
        self.conditioning_encoder = ConformerEncoder(conditioning_input_dim, spk.output_size, spk.attention_heads,
                                                     spk.linear_units, spk.num_blocks, spk.input_layer)
        self.perceiver_encoder = PerceiverResampler(d, spk.output_size, SPEAKER_LATENTS, spk.attention_heads,
                                                    spk.perceiver_mult)
        self.speed_emb = nn.Embedding(2, d)
        self.emo_conditioning_encoder = ConformerEncoder(conditioning_input_dim, emo.output_size,
                                                         emo.attention_heads, emo.linear_units, emo.num_blocks,
                                                         emo.input_layer)
        self.emo_perceiver_encoder = PerceiverResampler(EMO_PERCEIVER_WIDTH, emo.output_size, 1,
                                                        emo.attention_heads, emo.perceiver_mult)
        self.text_embedding = nn.Embedding(cfg.number_text_tokens + 1, d)
        self.emo_layer = nn.Linear(d, d)
        self.emovec_layer = nn.Linear(EMO_PERCEIVER_WIDTH, d)
        self.mel_embedding = nn.Embedding(cfg.number_mel_codes, d)
        self.gpt = GPT2Backbone(d, cfg.heads, cfg.layers)
        self.mel_pos_embedding = LearnedPositions(cfg.max_mel_tokens + 3, d)   # max_mel_tokens + 2 + 1 input
        self.text_pos_embedding = LearnedPositions(cfg.max_text_tokens + 2, d)
        self.final_norm = nn.LayerNorm(d)
        self.text_head = nn.Linear(d, cfg.number_text_tokens + 1)              # never used at inference
        self.mel_head = nn.Linear(d, cfg.number_mel_codes)

    @property
    def dim(self) -> int:
        return self.cfg.model_dim

    def fast_layout_(self) -> "UnifiedVoice":
        """Re-lay the GPT-2 weights out for decoding speed (same values, same state-dict view)."""
        for m in self.gpt.modules():
            if isinstance(m, Conv1D):
                m.fast_layout_()
        return self

    # ---- conditioning --------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.conditioning_input_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise OptionError(f"{name} must be a (B, T, {self.conditioning_input_dim}) float tensor of w2v-bert "
                              f"features, got {shape}")
        if x.shape[1] < 3:
            raise OptionError(f"{name} has {x.shape[1]} frames; the conv2d2 subsampling needs at least 3")
        return x.to(self.speed_emb.weight.dtype)

    def _lengths(self, x: torch.Tensor, length: Optional[int]) -> torch.Tensor:
        # Official quirk (SPEC-gpt §8 (b), §15.2): infer_v2 passes x.shape[-1] of the (B, T, W) features, i.e.
        # the feature WIDTH W, as the conditioning length (all frames with the real W = 1024 >= T; only the
        # first W frames in the narrow tiny folders). `length` overrides it.
        n = x.shape[-1] if length is None else int(length)
        return torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)

    def speaker_conditioning(self, features: torch.Tensor, lengths: torch.Tensor):
        """`get_conditioning`: Conformer then Perceiver -> (B, 32, D); also the conformer output and mask."""
        states, mask = self.conditioning_encoder(features, lengths)
        key_mask = F.pad(mask.squeeze(1), (SPEAKER_LATENTS, 0), value=True)
        return self.perceiver_encoder(states, key_mask), states, mask

    def emotion_conditioning(self, features: torch.Tensor, lengths: torch.Tensor):
        """`get_emo_conditioning`: emotion Conformer then 1-latent Perceiver -> (B, 1024)."""
        states, mask = self.emo_conditioning_encoder(features, lengths)
        key_mask = F.pad(mask.squeeze(1), (1, 0), value=True)
        return self.emo_perceiver_encoder(states, key_mask).squeeze(1), states, mask

    def speaker_latent(self, spk_cond_emb: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
        """(1, T, W) speaker features -> (1, 32, D) speaker latent (length = W unless given, see _lengths)."""
        x = self._features(spk_cond_emb, "spk_cond_emb")
        return self.speaker_conditioning(x, self._lengths(x, length))[0]

    def emovec(self, features: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
        """`get_emovec`: emotion perceiver output -> emovec_layer -> emo_layer (no activation) -> (B, D)."""
        x = self._features(features, "emotion features")
        return self.emo_layer(self.emovec_layer(self.emotion_conditioning(x, self._lengths(x, length))[0]))

    def merge_emovec(self, spk_cond_emb: torch.Tensor, emo_cond_emb: torch.Tensor, alpha: float = 1.0,
                     spk_length: Optional[int] = None, emo_length: Optional[int] = None) -> torch.Tensor:
        """s + alpha·(e - s), literally in that form (alpha 1.0 differs from e by rounding).

        Official quirk (SPEC-gpt §15.11): the speaker features also go through the *emotion* encoder.
        """
        e = self.emovec(emo_cond_emb, emo_length)
        s = self.emovec(spk_cond_emb, spk_length)
        return s + alpha * (e - s)

    def conditioning_block(self, spk_latent: torch.Tensor, emovec: torch.Tensor) -> torch.Tensor:
        """[s_0 + e, …, s_31 + e, speed_emb[1], speed_emb[0]] -> (B, 34, D); no positions added.

        Official quirk (SPEC-gpt §15.8): `use_speed` only contributes its shape; the block always holds
        speed_emb[1] then speed_emb[0], so no speed argument exists here.
        """
        b = spk_latent.shape[0]
        speed = self.speed_emb.weight
        return torch.cat((spk_latent + emovec.unsqueeze(1), speed[1].expand(b, 1, -1), speed[0].expand(b, 1, -1)), 1)

    # ---- embeddings ----------------------------------------------------------------------------------
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """[start, ids…, stop] embedded with text positions 0… -> (L + 2, D) for a 1-D id tensor."""
        cfg = self.cfg
        ids = F.pad(F.pad(ids.long(), (1, 0), value=cfg.start_text_token), (0, 1), value=cfg.stop_text_token)
        return self.text_embedding(ids) + self.text_pos_embedding(torch.arange(ids.shape[0], device=ids.device))

    def embed_mel(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.mel_embedding(codes) + self.mel_pos_embedding(positions)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Backbone output (already through gpt.ln_f) -> final_norm -> mel_head logits.

        Official quirk (SPEC-gpt §15.7): two LayerNorms in a row, `gpt.ln_f` then `final_norm`.
        """
        h = self.final_norm(hidden)
        return self.mel_head(h)

    def prompt(self, spk_latent: torch.Tensor, text_ids: torch.Tensor, emovec: torch.Tensor):
        """Generation prompt (`prepare_gpt_inputs`): (1, P, D) embeddings and a (P,) key-validity mask.

        Official quirk (SPEC-gpt §15.9): every start/stop text id (0/1) inside the text is dropped before the
        model adds its own; the row is then left-padded with zero vectors (masked) back to P = 34 + L + 2.
        """
        cfg = self.cfg
        ids = text_ids
        kept = ids[(ids != cfg.stop_text_token) & (ids != cfg.start_text_token)]
        cond = self.conditioning_block(spk_latent, emovec)[0]
        pad = ids.shape[0] - kept.shape[0]
        parts = [cond, self.embed_text(kept)]
        if pad:
            parts.insert(0, cond.new_zeros(pad, cond.shape[-1]))
        embeds = torch.cat(parts).unsqueeze(0)
        valid = torch.ones(embeds.shape[1], dtype=torch.bool, device=embeds.device)
        valid[:pad] = False
        return embeds, valid

    # ---- the latent pass (official `forward`) --------------------------------------------------------
    def latents(self, spk_latent: torch.Tensor, text_ids: torch.Tensor, codes: torch.Tensor,
                emovec: torch.Tensor) -> torch.Tensor:
        """Teacher-forced pass -> (1, N, D) final_norm'd states at [start, c_1 … c_{N-1}] (no mel_head).

        Official quirks: text ids 0/1 are KEPT here (§15.9); mel positions are 0, 1, 2, … (§15.4: generation
        used 2, 3, …); use_speed's value is ignored (§15.8). Codes must already be cut at the stop token.
        """
        text_ids = check_ids(text_ids, "text_ids", self.cfg.number_text_tokens + 1, self.cfg.max_text_tokens)
        # Empty codes are allowed (a segment whose first code was the stop token): the result is (1, 0, D).
        codes = check_ids(codes, "codes", self.cfg.number_mel_codes, self.cfg.max_mel_tokens + 1, allow_empty=True)
        check_conditioning(self, spk_latent, emovec)
        cfg = self.cfg
        mel = F.pad(F.pad(codes, (0, 1), value=cfg.stop_mel_token), (1, 0), value=cfg.start_mel_token)
        cond = self.conditioning_block(spk_latent, emovec)
        x = torch.cat((cond, self.embed_text(text_ids).unsqueeze(0),
                       self.embed_mel(mel, torch.arange(mel.shape[0], device=mel.device)).unsqueeze(0)), 1)
        hidden = self.final_norm(self.gpt(x, causal_attend(self.cfg.heads))[:, cond.shape[1]:])
        return hidden[:, -mel.shape[0]:][:, :-2]


def check_ids(ids, name: str, vocab: int, max_len: int, allow_empty: bool = False) -> torch.Tensor:
    """A 1-D (or (1, L)) integer tensor of ids in [0, vocab), 1 <= length <= max_len -> 1-D int64."""
    if not isinstance(ids, torch.Tensor):
        raise OptionError(f"{name} must be a torch tensor of integer ids, got {type(ids).__name__}")
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise OptionError(f"{name} must be a 1-D integer tensor (or shape (1, L)), got {ids.dtype} {tuple(ids.shape)}")
    if ids.numel() == 0:
        if allow_empty:
            return ids.long()
        raise OptionError(f"{name} is empty: at least one id is needed")
    if ids.numel() > max_len:
        raise OptionError(f"{name} has {ids.numel()} ids, more than the model's maximum {max_len}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise OptionError(f"{name} holds ids outside [0, {vocab}): min {int(ids.min())}, max {int(ids.max())}")
    return ids.long()


def check_conditioning(model: UnifiedVoice, spk_latent, emovec) -> None:
    d = model.dim
    if not isinstance(spk_latent, torch.Tensor) or tuple(spk_latent.shape) != (1, SPEAKER_LATENTS, d):
        got = tuple(spk_latent.shape) if isinstance(spk_latent, torch.Tensor) else type(spk_latent).__name__
        raise OptionError(f"spk_latent must have shape (1, {SPEAKER_LATENTS}, {d}), got {got}")
    if not isinstance(emovec, torch.Tensor) or tuple(emovec.shape) != (1, d):
        got = tuple(emovec.shape) if isinstance(emovec, torch.Tensor) else type(emovec).__name__
        raise OptionError(f"emovec must have shape (1, {d}), got {got}")


# ---- loading and writing -----------------------------------------------------------------------------

def _folder(folder: Union[ModelFolder, str, Path]) -> ModelFolder:
    return folder if isinstance(folder, ModelFolder) else ModelFolder(folder)


def build_gpt(folder: Union[ModelFolder, str, Path], device: Union[str, torch.device] = "cpu") -> UnifiedVoice:
    """The model for the folder's config.yaml (+ tiny_overrides.json), uninitialised, on `device`."""
    folder = _folder(folder)
    with torch.device(device):
        return UnifiedVoice(folder.config.gpt, folder.overrides.gpt_conditioning_input_dim)


def gpt_state_dict(obj: object, source: Union[str, Path]) -> dict:
    """The state dict of a loaded gpt.pth: `obj['model']` when present, else `obj`; alias keys dropped."""
    state = obj["model"] if isinstance(obj, dict) and "model" in obj else obj
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} holds a {type(state).__name__}, not a state dict")
    # post_init_gpt2_config() aliases (gpt.wte.weight, inference_model.*): the official loader skips them.
    return {k: v for k, v in state.items() if k not in ALIAS_KEYS and not k.startswith(ALIAS_PREFIXES)}


def load_gpt(folder: Union[ModelFolder, str, Path]) -> UnifiedVoice:
    """Build the GPT for a model folder on the meta device, load its gpt.pth strictly, set eval mode.

    Accepts the plain state dict and the {'model': state_dict} layout. A missing file raises
    ModelFolderError, a mismatching one CheckpointError naming the keys.
    """
    folder = _folder(folder)
    path = folder.gpt_checkpoint
    model = build_gpt(folder, "meta")
    state = gpt_state_dict(load_torch_file(path), path)
    load_strict(model, state, path)
    del state
    return model.fast_layout_().eval().requires_grad_(False)


def write_random_checkpoint(folder: ModelFolder, seed: int) -> None:
    """Write a seeded random gpt.pth (official keys and layout, standard `pe` tables) for the folder."""
    from ..checkpoint import randomize_

    model = build_gpt(folder, "meta").to_empty(device="cpu")
    randomize_(model, seed)
    with torch.no_grad():
        for encoder in (model.conditioning_encoder, model.emo_conditioning_encoder):
            pe = encoder.embed.pos_enc.pe
            pe.copy_(sinusoid_table(pe.shape[1], pe.shape[2]))
    torch.save(model.state_dict(), folder.root / folder.config.gpt_checkpoint)
