"""The ScanNet / Fast ScanNet patch classifier as a fully convolutional network.

VGG16 with no padding anywhere and the three fully connected layers turned into
convolutions (conv6 2×2, conv7 1×1, conv8 1×1 → 2 classes), METHODS §1 / Table I of the
Fast ScanNet paper. Without padding, one output cell sees exactly one 244×244 input patch
and five 2×2/2 pools make consecutive cells 32 px apart, so running the network on a big
ROI is the same as classifying every 244×244 patch at stride 32 — that equivalence is
what `anchor.py` extends to strides 16, 8, 4.

`forward` returns logits (N, 2, H', W'); the tumour probability is softmax[:, 1]
(`predict_proba`). A width multiplier scales every channel count and never the geometry:
full VGG16 costs 4.92 TFLOP (multiply-add = 2 FLOP) per 2868² ROI at α = 1 and 5.10 TFLOP
per 2884² ROI at α = 2, far too slow for a 2-core CPU; the cost scales as width², and
`DEFAULT_CPU_WIDTH` = 0.125 costs 80 / 83 GFLOP per ROI.
"""

from __future__ import annotations

import torch
from torch import nn

PATCH = 244  # receptive field = training patch size (px at the model's mpp)
STRIDE = 32  # scanning stride of the plain FCN: 2**5 from five 2×2/2 pools
N_POOLS = 5

# Chosen so that a 2884² ROI at α = 2 takes seconds, not minutes, on a 2-core CPU
# (83 GFLOP per ROI, 1/64 of full VGG16; see docs/models.md for the measurements).
DEFAULT_CPU_WIDTH = 0.125

# VGG16 configuration "D": channel counts, "M" = 2×2/2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip
FC_CHANNELS = 1024  # conv6 / conv7 width at width = 1.0

CONV_NAMES = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip


def scaled_channels(channels: int, width: float) -> int:
    """Channel count at `width`: rounded, at least 1 (geometry never depends on it)."""
    return max(1, int(round(channels * width)))


class ScanNetFCN(nn.Module):
    """No-padding VGG16 FCN: receptive field 244, scanning stride 32, logits out.

    Layers are stored in `features` (convs, ReLUs, pools in VGG order) and `head`
    (conv6, ReLU, Dropout, conv7, ReLU, Dropout, conv8) so that `anchor.densify` can walk
    them and re-run them with other strides/dilations while sharing the weights.
    """

    architecture = "scannet-fcn"

    def __init__(self, width: float = 1.0, in_channels: int = 3, num_classes: int = 2,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.width = float(width)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = scaled_channels(int(item), width)
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=0))
                layers.append(nn.ReLU(inplace=True))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        fc = scaled_channels(FC_CHANNELS, width)
        # Dropout layers are identity in eval mode, so inference is deterministic.
        self.head = nn.Sequential(
            nn.Conv2d(c_in, fc, kernel_size=2, padding=0),  # conv6: the 2×2 pool5 map
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc, fc, kernel_size=1),  # conv7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc, num_classes, kernel_size=1),  # conv8
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (fan-in, ReLU) init: keeps activations O(1) through 16 layers, so the
        exactness tests compare numbers of a sensible size (and training starts sanely)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def config(self) -> dict:
        """Architecture parameters needed to rebuild this network (for the JSON file)."""
        return {
            "architecture": self.architecture,
            "width": self.width,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "patch": PATCH,
            "stride": STRIDE,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes, H', W') with H' = (H − 244) // 32 + 1."""
        check_input(x, PATCH)
        return self.head(self.features(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Tumour probability (N, H', W') = softmax(logits)[:, 1] at stride 32."""
        return tumour_probability(self(x))


def tumour_probability(logits: torch.Tensor) -> torch.Tensor:
    """softmax over classes, class 1 (tumour): (N, C, H, W) → (N, H, W), in float32."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def check_input(x: torch.Tensor, patch: int = PATCH) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected an image batch (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] < patch or x.shape[-2] < patch:
        raise ValueError(
            f"input {x.shape[-2]}×{x.shape[-1]} is smaller than one {patch}×{patch} patch"
        )


def conv_layers(model: ScanNetFCN) -> list[nn.Conv2d]:
    """All 16 convolutions in order (13 VGG convs, conv6, conv7, conv8)."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]
