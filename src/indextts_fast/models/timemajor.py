"""Time-major (B, T, C) 1-D convolutions for the bf16 CPU stages (DiT WaveNet head, BigVGAN).

A (B, C, 1, T) tensor in channels-last memory IS the time-major (B, T, C) tensor, and channels-last is
oneDNN's native layout: `conv1d_time_major` runs a Conv1d / ConvTranspose1d as the equivalent conv2d on
that view, so neither its input nor its output is reordered (the channel-major conv1d of a bf16 tensor
spends as long in those reorders as in the arithmetic at BigVGAN's 24-192 channels; 2-7x faster there).
The weight is kept in channels-last form next to the module's own, made once while it is unchanged.
The exact fp32 paths never use this.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv1d_time_major(conv: Union[nn.Conv1d, nn.ConvTranspose1d], x: Tensor,
                      padding: Optional[int] = None) -> Tensor:
    """conv(x) for x (B, T, C) time-major -> (B, T', C'), with the module's stride, dilation and padding
    (or `padding` frames of zeros per side instead)."""
    pad = conv.padding[0] if padding is None else padding
    weight, x4 = _channels_last_weight(conv), x.transpose(1, 2).unsqueeze(2)
    if isinstance(conv, nn.ConvTranspose1d):
        y = F.conv_transpose2d(x4, weight, conv.bias, stride=(1, conv.stride[0]), padding=(0, pad),
                               output_padding=(0, conv.output_padding[0]), dilation=(1, conv.dilation[0]))
    else:
        y = F.conv2d(x4, weight, conv.bias, stride=(1, conv.stride[0]), padding=(0, pad),
                     dilation=(1, conv.dilation[0]))
    return y.squeeze(2).transpose(1, 2)


def _channels_last_weight(conv: nn.Module) -> Tensor:
    w = conv.weight
    key = (w.data_ptr(), w.dtype, tuple(w.shape))
    if conv.__dict__.get("_channels_last_key") != key:
        conv.__dict__["_channels_last_weight"] = w.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
        conv.__dict__["_channels_last_key"] = key
    return conv.__dict__["_channels_last_weight"]
