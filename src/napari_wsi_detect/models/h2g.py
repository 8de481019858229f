"""H2G-Net (METHODS §3): a MobileNetV2 patch classifier and a U-Net refiner in one module.

Stage 1, `PatchClassifier`: MobileNetV2 features (inverted residual blocks, written here
because torchvision is not installed and would pull its own torch) with a width
multiplier, then the paper's head: global average pooling → dense 100 → dropout 0.5 →
ReLU → batch norm → dense 2 (softmax). One 256×256 patch at ~1 µm/px → one tumour
probability.

Stage 2, `RefineUNet`: a small U-Net on 4 channels (a low-resolution RGB image of the
whole slide in [0, 1] + the stage-1 heatmap, both resized to `refine_size`², bilinear)
→ one tumour logit per pixel.

`H2GNet` holds both so that a model is one safetensors + JSON pair. Its `forward`
dispatches on the channel count: 3 channels = patches → (N, 2) logits, 4 channels =
refinement input → (N, 1, H, W) logits; the training loop and the detector use it that
way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

PATCH = 256  # stage-1 patch (model px at ~1 µm/px)
REFINE_SIZE = 1024  # stage-2 input side
DEFAULT_WIDTH = 0.35  # MobileNetV2 width multiplier: ~25 MMAC per 256² patch
DEFAULT_UNET_WIDTH = 8  # first U-Net level's channels

# (expansion t, channels c, repeats n, first stride s): MobileNetV2 Table 2.
MOBILENET_V2_CFG = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel count rounded to a multiple of `divisor`, never more than 10 % below `v`
    (MobileNet's rule, so widths match the reference implementations)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise (stride s) → 1×1 linear projection; identity shortcut
    when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(c_in * expand))
        self.use_res = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(c_in, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, c_out, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class PatchClassifier(nn.Module):
    """MobileNetV2 (width multiplier) + the H2G-Net head; `features` exposes the pooled
    deep features (the cluster-guided loss can cluster them)."""

    def __init__(self, width: float = DEFAULT_WIDTH, num_classes: int = 2,
                 hidden: int = 100, dropout: float = 0.5) -> None:
        super().__init__()
        c = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [_conv_bn(3, c, 3, 2)]
        for t, ch, n, s in MOBILENET_V2_CFG:
            out = make_divisible(ch * width)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        layers.append(_conv_bn(c, last, 1))
        self.backbone = nn.Sequential(*layers)
        self.feature_dim = last
        # The paper's head order: dense 100 → dropout → ReLU → batch norm → dense softmax.
        self.head = nn.Sequential(
            nn.Linear(last, hidden), nn.Dropout(dropout), nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden), nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) globally average-pooled backbone features."""
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True))


class RefineUNet(nn.Module):
    """U-Net: `depth` 2×2 max-pool levels, channels base·2^level, bilinear upsampling
    with skip concatenation; 1 output logit per pixel. Input sides must be divisible by
    2^depth."""

    def __init__(self, in_channels: int = 4, base: int = DEFAULT_UNET_WIDTH,
                 depth: int = 5) -> None:
        super().__init__()
        chans = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, chans[0])] + [
            _double_conv(chans[i], chans[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([
            _double_conv(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(chans[0], 1, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


class H2GNet(nn.Module):
    """Both stages in one module (see the module docstring)."""

    architecture = "h2g-net"

    def __init__(self, width: float = DEFAULT_WIDTH, unet_width: int = DEFAULT_UNET_WIDTH,
                 refine_size: int = REFINE_SIZE, patch: int = PATCH, unet_depth: int = 5
                 ) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if patch % 32:
            raise ValueError(f"patch must be a multiple of 32 (MobileNetV2 stride), got {patch}")
        if refine_size % 2 ** unet_depth:
            raise ValueError(f"refine_size {refine_size} must be divisible by 2^{unet_depth}")
        self.width, self.unet_width = float(width), int(unet_width)
        self.refine_size, self.patch, self.unet_depth = int(refine_size), int(patch), int(unet_depth)
        self.patch_net = PatchClassifier(width)
        self.refiner = RefineUNet(4, self.unet_width, self.unet_depth)

    def config(self) -> dict:
        return {"architecture": self.architecture, "width": self.width,
                "unet_width": self.unet_width, "unet_depth": self.unet_depth,
                "refine_size": self.refine_size, "in_channels": 3, "num_classes": 2,
                "patch": self.patch, "stride": self.patch}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (3, 4):
            raise ValueError(f"expected (N, 3, patch, patch) patches or a (N, 4, H, W) "
                             f"refinement input, got {tuple(x.shape)}")
        return self.patch_net(x) if x.shape[1] == 3 else self.refiner(x)


def build_h2g(config: dict) -> H2GNet:
    """The untrained network a model config describes (models/io.py registry)."""
    return H2GNet(width=float(config.get("width", DEFAULT_WIDTH)),
                  unet_width=int(config.get("unet_width", DEFAULT_UNET_WIDTH)),
                  refine_size=int(config.get("refine_size", REFINE_SIZE)),
                  patch=int(config.get("patch", PATCH)),
                  unet_depth=int(config.get("unet_depth", 5)))


__all__ = ["H2GNet", "InvertedResidual", "PatchClassifier", "RefineUNet", "build_h2g",
           "make_divisible"]
