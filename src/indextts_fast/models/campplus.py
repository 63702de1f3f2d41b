"""CAMPPlus speaker embedding (3D-Speaker's CAM++), the S2Mel style vector: SPEC-s2mel.md 4.8.

`CAMPPlus.from_folder(folder)(fbank[None]) -> (1, embedding_size)` with fbank = `audio.kaldi_fbank(wav16k)`.
Constructor arguments come from `folder.overrides.campplus_ctor` (infer_v2 hard-codes the real ones: feat_dim
80, embedding_size 192, growth_rate 32, bn_size 4, init_channels 128). Keys are those of the official
`campplus_cn_common.bin` (a plain state dict, BatchNorm counters included). All BatchNorms use running
statistics (eval).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_strict, load_torch_file
from ..config import CAMPPlusArgs, ModelFolder
from ..errors import CheckpointError

HEAD_CHANNELS = 32  # the FCM head's width is fixed
DENSE_BLOCKS = ((12, 1), (24, 2), (16, 2))  # (layers, dilation) of the three CAM dense blocks, kernel 3
SEGMENT = 100  # frames per segment of the CAM context pooling


class BNReLU(nn.Module):
    """`nonlinear` of the official layers: BatchNorm1d (key `batchnorm`), then ReLU unless `relu=False`."""

    def __init__(self, channels: int, affine: bool = True, relu: bool = True):
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm(x)
        return F.relu(x) if self.relu else x


class ResBlock2d(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut (1x1 conv + BN when striding), ReLU.
    Strides act on frequency only."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class FCM(nn.Module):
    """2-D front end: (B, F, T) -> (B, 32·F/8, T); frequency is divided by 8, time kept."""

    def __init__(self, feat_dim: int):
        super().__init__()
        c = HEAD_CHANNELS
        self.conv1 = nn.Conv2d(1, c, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(ResBlock2d(c, 2), ResBlock2d(c, 1))
        self.layer2 = nn.Sequential(ResBlock2d(c, 2), ResBlock2d(c, 1))
        self.conv2 = nn.Conv2d(c, c, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.out_channels = c * (feat_dim // 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(out)))))
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])


class ConvBN(nn.Module):
    """`linear` conv followed by `nonlinear` (TDNN layer and the final dense layer)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, affine: bool = True,
                 relu: bool = True):
        super().__init__()
        self.linear = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
        self.nonlinear = BNReLU(c_out, affine=affine, relu=relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class BNConv(nn.Module):
    """`nonlinear` then a 1x1 `linear` conv (transit layers)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.nonlinear = BNReLU(c_in)
        self.linear = nn.Conv1d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class CAMLayer(nn.Module):
    """Local dilated conv gated by a context of the sequence mean plus 100-frame segment means."""

    def __init__(self, c_in: int, c_out: int, dilation: int):
        super().__init__()
        self.linear_local = nn.Conv1d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(c_in, c_in // 2, 1)
        self.linear2 = nn.Conv1d(c_in // 2, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        # segment means: the last, partial segment averages the frames it has (avg_pool ceil_mode)
        seg = F.avg_pool1d(x, SEGMENT, SEGMENT, ceil_mode=True)
        seg = seg.unsqueeze(-1).expand(*seg.shape, SEGMENT).reshape(*seg.shape[:-1], -1)[..., :t]
        context = x.mean(-1, keepdim=True) + seg
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * gate


class CAMDenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bottleneck: int, dilation: int):
        super().__init__()
        self.nonlinear1 = BNReLU(c_in)
        self.linear1 = nn.Conv1d(c_in, bottleneck, 1, bias=False)
        self.nonlinear2 = BNReLU(bottleneck)
        self.cam_layer = CAMLayer(bottleneck, growth, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class CAMDenseBlock(nn.ModuleDict):
    """Dense connectivity: every layer's output (growth channels) is appended to its input."""

    def __init__(self, layers: int, c_in: int, growth: int, bottleneck: int, dilation: int):
        super().__init__({f"tdnnd{i + 1}": CAMDenseLayer(c_in + i * growth, growth, bottleneck, dilation)
                          for i in range(layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class XVector(nn.Module):
    def __init__(self, c_in: int, args: CAMPPlusArgs):
        super().__init__()
        self.tdnn = ConvBN(c_in, args.init_channels, kernel=5, stride=2)
        channels = args.init_channels
        for i, (layers, dilation) in enumerate(DENSE_BLOCKS):
            self.add_module(f"block{i + 1}", CAMDenseBlock(layers, channels, args.growth_rate,
                                                           args.bn_size * args.growth_rate, dilation))
            channels += layers * args.growth_rate
            self.add_module(f"transit{i + 1}", BNConv(channels, channels // 2))
            channels //= 2
        self.out_nonlinear = BNReLU(channels)
        self.dense = ConvBN(2 * channels, args.embedding_size, affine=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tdnn(x)
        for i in range(len(DENSE_BLOCKS)):
            x = getattr(self, f"transit{i + 1}")(getattr(self, f"block{i + 1}")(x))
        x = self.out_nonlinear(x)
        stats = torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)  # statistics pooling
        return self.dense.nonlinear(self.dense.linear(stats.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    def __init__(self, args: CAMPPlusArgs = CAMPPlusArgs()):
        super().__init__()
        self.head = FCM(args.feat_dim)
        self.xvector = XVector(self.head.out_channels, args)

    @classmethod
    def from_folder(cls, folder: ModelFolder) -> "CAMPPlus":
        with torch.device("meta"):
            model = cls(folder.overrides.campplus_ctor)
        path = folder.aux("campplus")
        state = load_torch_file(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} should hold a CAMPPlus state dict, found {type(state).__name__}")
        return load_strict(model, state, path).eval()

    @torch.no_grad()
    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank (B, T, feat_dim) -> style (B, embedding_size)."""
        return self.xvector(self.head(fbank.permute(0, 2, 1)))


def write_random_checkpoint(folder: ModelFolder, seed: int) -> None:
    """hf_cache/campplus_cn_common.bin: a random state dict with random BatchNorm statistics."""
    from ..checkpoint import randomize_

    model = CAMPPlus(folder.overrides.campplus_ctor)
    randomize_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(1000)
    out = folder.root / "hf_cache" / "campplus_cn_common.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
