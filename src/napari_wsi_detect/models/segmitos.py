"""SegMitos: an FCN semantic segmentation network for mitoses (METHODS §2).

A VGG16-style backbone (13 padded 3×3 convolutions in five blocks, each closed by a 2×2/2
max-pool; batch norm after each convolution so that a narrow network trains from scratch
on a CPU), fc6 (3×3) and fc7 (1×1) as convolutions, and the FCN heads: FCN-32s scores
pool5's features, FCN-16s adds a score of pool4 and FCN-8s one of pool3, each coarser
score map upsampled ×2 (bilinear) before the sum. The network's output is always the
stride-8 score map (32s and 16s are upsampled to it), so every variant has one geometry.
2 classes: the mitosis probability is softmax[:, 1].

Geometry. With an input whose sides are multiples of 32, output cell (i, j) is the 8×8
input block [8j, 8j+8) × [8i, 8i+8). Padding makes a cell depend on everything within the
receptive field (RF_RADIUS input px) and makes cells near the input's edge differ from
those of a larger input; so tiled inference equals whole-field inference for the cells at
least HALO px from every tile edge, when the tiles' origins lie on one 32-px grid (the
detector's ROIs: multiples of 4 cells), tests/test_segmitos.py.

A width multiplier scales every channel count (never the geometry); DEFAULT_WIDTH = 0.125
is the narrow CPU default (channels 8 … 64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "segmitos-fcn"
OUTPUT_STRIDE = 8  # FCN-8s: the map has one cell per 8×8 input px
ALIGN = 32  # five 2×2 pools: tiles must start on a 32-px grid
# Receptive field of an output cell: 276 px through pool5 + fc6 (3×3 at stride 32), plus
# the two bilinear ×2 upsamplings (one coarse cell each side at /32 and /16): radius 186.
RF_RADIUS = 186
HALO = 192  # model px of context on each side of a tile: >= RF_RADIUS, a multiple of 8
DEFAULT_WIDTH = 0.125
VARIANTS = ("32s", "16s", "8s")

VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
FC_CHANNELS = 1024


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _block(c_in: int, outs: tuple[int, ...], width: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for c in outs:
        c_out = _ch(c, width)
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
        c_in = c_out
    layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers), c_in


class SegMitosFCN(nn.Module):
    """FCN-32s/16s/8s on a VGG16-style backbone; logits (N, 2, H/8, W/8)."""

    architecture = ARCHITECTURE

    def __init__(self, width: float = DEFAULT_WIDTH, variant: str = "8s",
                 in_channels: int = 3, num_classes: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.width, self.variant = float(width), variant
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        blocks, c = [], in_channels
        chans = []
        for outs in VGG16_BLOCKS:
            b, c = _block(c, outs, width)
            blocks.append(b)
            chans.append(c)
        self.block1, self.block2, self.block3, self.block4, self.block5 = blocks
        fc = _ch(FC_CHANNELS, width)
        self.fc = nn.Sequential(
            nn.Conv2d(c, fc, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool4 = nn.Conv2d(chans[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(chans[2], num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # FCN: the skip scores start at zero, so 16s/8s begin as the coarser net.
        for m in (self.score_pool4, self.score_pool3, self.score_fr):
            nn.init.normal_(m.weight, std=1e-3)

    def config(self) -> dict:
        return {"architecture": self.architecture, "width": self.width,
                "variant": self.variant, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "patch": OUTPUT_STRIDE + 2 * HALO,
                "stride": OUTPUT_STRIDE}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H/8, W/8); H and W must be multiples of 32 (`pad_to_grid`)."""
        if x.dim() != 4 or x.shape[-1] % ALIGN or x.shape[-2] % ALIGN:
            raise ValueError(f"expected (N, C, H, W) with H, W multiples of {ALIGN}, got "
                             f"{tuple(x.shape)}")
        p3 = self.block3(self.block2(self.block1(x)))
        p4 = self.block4(p3)
        score = self.score_fr(self.fc(self.block5(p4)))
        up = _up2
        if self.variant == "32s":
            return up(up(score))
        score = up(score) + self.score_pool4(p4)
        if self.variant == "16s":
            return up(score)
        return up(score) + self.score_pool3(p3)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Mitosis probability (N, H/8, W/8)."""
        return torch.softmax(self(x).float(), dim=1)[:, 1]


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def pad_to_grid(x: torch.Tensor, align: int = ALIGN) -> torch.Tensor:
    """`x` zero-padded at the bottom and right to multiples of `align`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % align, (-w) % align
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class TiledForward(nn.Module):
    """The detector's forward on a ROI read with `halo` model px of context on each side:
    (N, 3, 8n + 2·halo, 8m + 2·halo) -> mitosis probability (N, n, m)."""

    def __init__(self, net: SegMitosFCN, halo: int = HALO) -> None:
        super().__init__()
        if halo % OUTPUT_STRIDE:
            raise ValueError(f"halo must be a multiple of {OUTPUT_STRIDE}, got {halo}")
        self.net, self.halo = net, int(halo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        n, m = (h - 2 * self.halo) // OUTPUT_STRIDE, (w - 2 * self.halo) // OUTPUT_STRIDE
        if n < 1 or m < 1:
            raise ValueError(f"input {h}×{w} has no cell inside a {self.halo}-px halo")
        logits = self.net(pad_to_grid(x))
        k = self.halo // OUTPUT_STRIDE
        return torch.softmax(logits[:, :, k:k + n, k:k + m].float(), dim=1)[:, 1]

    def core_module(self) -> nn.Module:
        """The network part (grid-padded input -> logits), for models/backends.py."""
        return self.net

    def with_core(self, core: nn.Module) -> TiledForward:
        """The same forward with the network replaced by `core` (a backend's copy)."""
        return TiledForward(core, self.halo)  # type: ignore[arg-type]


def build_segmitos(config: dict) -> SegMitosFCN:
    """models.io builder: the untrained network a config describes."""
    return SegMitosFCN(width=float(config.get("width", DEFAULT_WIDTH)),
                       variant=str(config.get("variant", "8s")),
                       in_channels=int(config.get("in_channels", 3)),
                       num_classes=int(config.get("num_classes", 2)))


__all__ = ["ALIGN", "ARCHITECTURE", "DEFAULT_WIDTH", "HALO", "OUTPUT_STRIDE", "RF_RADIUS",
           "SegMitosFCN", "TiledForward", "build_segmitos", "pad_to_grid"]
