"""Dense scanning: anchor layers (Fast ScanNet), shift-and-stitch (ScanNet), patch-wise.

All three compute the same thing — the tumour probability of every 244×244 patch of the
input at stride S' = 32/α — at very different cost:

* `densify(model, alpha)`: the anchor-layer network. In a dense tensor framework an
  anchor layer (operating distance α, dilation α, anchor stride s_o·α) over the
  interleaved "union feature" is exactly a layer with stride 1 and dilation multiplied
  by the accumulated factor (filter rarefaction / à trous). So the last log2(α) pools get
  kernel 2, stride 1, dilation = factor so far, and every later conv/pool has its
  dilation multiplied by the factor. The pools before them (Phase 1) run unchanged.
  Cost: ~1.1× the α = 1 network for 4× the cells at α = 2.
* `shift_and_stitch(model, x, alpha)`: ScanNet's OPT reconstruction — the stride-32 FCN
  on α² inputs offset by (i·S', j·S'), interleaved. α² times the work.
* `patchwise(model, x, stride)`: every patch classified on its own — the reference.

Geometry (Eq. 1): an input of L px gives L_m = (L − 244)/S' + 1 cells; map cell (r, c)
is the patch whose top-left input pixel is (r·S', c·S'). Inputs longer than that are
cropped at the bottom/right (the incomplete patches there are not classified).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .scannet import N_POOLS, PATCH, STRIDE, ScanNetFCN, check_input, tumour_probability

ALPHAS = (1, 2, 4, 8, 16, 32)


def check_alpha(alpha: int) -> int:
    alpha = int(alpha)
    if alpha not in ALPHAS:
        raise ValueError(
            f"dense coefficient alpha must be a power of 2 dividing {STRIDE} "
            f"(one of {ALPHAS}), got {alpha}"
        )
    return alpha


def output_stride(alpha: int) -> int:
    """S' = S_p / α: distance between map cells in input pixels."""
    return STRIDE // check_alpha(alpha)


def output_size(length: int, alpha: int = 1) -> int:
    """Cells along one side for an input of `length` px (floor; 0 if shorter than a patch)."""
    if length < PATCH:
        return 0
    return (length - PATCH) // output_stride(alpha) + 1


def input_size(cells: int, alpha: int = 1) -> int:
    """Eq. 1: L_r = L_p + (L_m − 1)·S' — input px that give exactly `cells` cells."""
    if cells < 1:
        raise ValueError(f"need at least one output cell, got {cells}")
    return PATCH + (cells - 1) * output_stride(alpha)


def prefer_channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC on CPU: oneDNN's direct convolution for few channels (width ≤ 0.25) is 2–2.5×
    faster on channels-last input than on NCHW, with the same results to ~1e-6
    (docs/models.md). Other devices keep their layout."""
    if x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _crop_to_cells(x: torch.Tensor, alpha: int) -> torch.Tensor:
    """Drop the bottom/right pixels that belong to no complete patch at stride 32/α."""
    h = input_size(output_size(x.shape[-2], alpha), alpha)
    w = input_size(output_size(x.shape[-1], alpha), alpha)
    return x[..., :h, :w]


def layer_plan(model: ScanNetFCN, alpha: int) -> list[tuple[nn.Module, int, int]]:
    """(layer, stride, dilation) for every conv and pool of the dense network, in order.

    ReLU and Dropout are pointwise and need no change, so they are not listed. The
    last log2(α) of the five pools become anchor pools (stride 1); from the first of
    them on, every layer's dilation is the accumulated factor.
    """
    alpha = check_alpha(alpha)
    n_anchor = int(math.log2(alpha))
    factor = 1
    pool_index = 0
    plan: list[tuple[nn.Module, int, int]] = []
    for layer in list(model.features) + list(model.head):
        if isinstance(layer, nn.Conv2d):
            plan.append((layer, 1, factor))
        elif isinstance(layer, nn.MaxPool2d):
            if pool_index >= N_POOLS - n_anchor:
                plan.append((layer, 1, factor))
                factor *= 2
            else:
                plan.append((layer, 2, factor))
            pool_index += 1
    return plan


class DenseScanNet(nn.Module):
    """The anchor-layer network for one α. Holds the base model as a submodule, so the
    weights are the base model's own tensors (no copy): training or loading the base
    model changes this one too."""

    def __init__(self, model: ScanNetFCN, alpha: int, *, channels_last: bool = True,
                 bf16: bool = False) -> None:
        super().__init__()
        self.base = model
        self.alpha = check_alpha(alpha)
        self.stride = output_stride(alpha)
        self.channels_last = channels_last
        self.bf16 = bf16
        self._plan = layer_plan(model, alpha)
        # The network part a backend replaces (models/backends.py): cropped input ->
        # logits. None = `_run`, the exact torch path.
        self.core: Any = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H', W') at stride 32/α."""
        check_input(x, PATCH)
        x = _crop_to_cells(x, self.alpha)
        if self.channels_last:
            x = prefer_channels_last(x)
        if self.core is not None:
            return self.core(x)
        if self.bf16:
            # bfloat16 matmuls: ~1.5–2× faster on CPUs with AVX512-BF16/AMX, probabilities
            # off by up to ~1e-2 — not exact, so never the default.
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self._run(x).float()
        return self._run(x)

    def core_module(self) -> nn.Module:
        """The network part as a module (cropped input -> logits), for a backend to
        export or compile; its parameters are the base model's."""
        return _AnchorCore(self)

    def with_core(self, core: Any) -> DenseScanNet:
        """The same dense network with its network part replaced by `core` (a compiled
        or exported copy of `core_module()`); cropping and softmax stay here."""
        new = DenseScanNet(self.base, self.alpha, channels_last=self.channels_last)
        new.core = core
        return new

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        layers = iter(self._plan)
        # Walk the base model's own sequence so ReLU/Dropout keep their place and their
        # train/eval behaviour; convs and pools are re-run with the planned geometry.
        for layer in list(self.base.features) + list(self.base.head):
            if isinstance(layer, nn.Conv2d):
                _, stride, dilation = next(layers)
                x = F.conv2d(x, layer.weight, layer.bias, stride=stride, dilation=dilation)
            elif isinstance(layer, nn.MaxPool2d):
                _, stride, dilation = next(layers)
                x = F.max_pool2d(x, kernel_size=2, stride=stride, dilation=dilation)
            else:
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tumour probability (N, H', W'), H' = (H − 244)·α/32 + 1."""
        return tumour_probability(self.logits(x))


class _AnchorCore(nn.Module):
    """DenseScanNet's convs and pools with the planned geometry, as one module."""

    def __init__(self, dense: DenseScanNet) -> None:
        super().__init__()
        self.base = dense.base
        self._dense = [dense]  # a list: not a submodule (it holds `base` already)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._dense[0]._run(x)


def densify(model: ScanNetFCN, alpha: int, *, channels_last: bool = True,
            bf16: bool = False) -> DenseScanNet:
    """The Fast ScanNet dense network for dense coefficient α, sharing `model`'s weights.

    `channels_last` (default) feeds NHWC input on CPU (exact, faster); `bf16` runs under
    bfloat16 autocast (faster on CPUs with BF16 support, not exact)."""
    return DenseScanNet(model, alpha, channels_last=channels_last, bf16=bf16)


@torch.no_grad()
def shift_and_stitch(model: ScanNetFCN, x: torch.Tensor, alpha: int) -> torch.Tensor:
    """ScanNet OPT reconstruction: α² stride-32 runs on offset inputs, interleaved.

    p(h', w') = p_ij(⌊h'/α⌋, ⌊w'/α⌋) with i = h' mod α, j = w' mod α, the run p_ij on the
    input offset by (i·S', j·S'). Same cells and values as `densify(model, alpha)(x)`.
    """
    alpha = check_alpha(alpha)
    check_input(x, PATCH)
    s = output_stride(alpha)
    hm, wm = output_size(x.shape[-2], alpha), output_size(x.shape[-1], alpha)
    out = x.new_empty((x.shape[0], hm, wm), dtype=torch.float32)
    for i in range(alpha):
        rows = len(range(i, hm, alpha))
        for j in range(alpha):
            cols = len(range(j, wm, alpha))
            if rows == 0 or cols == 0:
                continue
            # Crop each offset input to exactly rows × cols patches at stride 32.
            sub = x[..., i * s: i * s + input_size(rows), j * s: j * s + input_size(cols)]
            sub = prefer_channels_last(sub)  # same kernels as densify: a fair baseline
            out[:, i::alpha, j::alpha] = tumour_probability(model(sub))
    return out


def patch_origins(length: int, stride: int) -> range:
    """Top-left positions of the complete patches along one side."""
    return range(0, length - PATCH + 1, stride)


def iter_patch_batches(
    x: torch.Tensor, positions: list[tuple[int, int]], batch_size: int
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """(positions, patches (B·N, C, 244, 244)) in chunks, so memory stays bounded by
    `batch_size` patches whatever the number of positions (unfold would copy them all)."""
    for start in range(0, len(positions), batch_size):
        chunk = positions[start: start + batch_size]
        patches = torch.cat([x[..., r: r + PATCH, c: c + PATCH] for r, c in chunk], dim=0)
        yield chunk, patches


@torch.no_grad()
def classify_patches(
    model: ScanNetFCN, x: torch.Tensor, positions: list[tuple[int, int]], batch_size: int = 32
) -> torch.Tensor:
    """Tumour probability of the patches at `positions` (top-left row, col): (N, P)."""
    n = x.shape[0]
    out = torch.empty((n, len(positions)), dtype=torch.float32)
    done = 0
    for chunk, patches in iter_patch_batches(x, positions, max(1, batch_size // n)):
        p = tumour_probability(model(prefer_channels_last(patches)))  # (len(chunk)·N, 1, 1), patch-major
        out[:, done: done + len(chunk)] = p.reshape(len(chunk), n).T
        done += len(chunk)
    return out


@torch.no_grad()
def patchwise(model: ScanNetFCN, x: torch.Tensor, stride: int, batch_size: int = 32
              ) -> torch.Tensor:
    """Reference: each 244×244 patch at `stride` classified alone → (N, H', W')."""
    check_input(x, PATCH)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    rows = patch_origins(x.shape[-2], stride)
    cols = patch_origins(x.shape[-1], stride)
    positions = [(r, c) for r in rows for c in cols]
    probs = classify_patches(model, x, positions, batch_size)
    return probs.reshape(x.shape[0], len(rows), len(cols))


def dense_flops(model: ScanNetFCN, height: int, width: int, alpha: int = 1) -> int:
    """Analytic FLOPs (multiply-add = 2) of the convolutions of the dense network on an
    input of height × width (cropped to whole patches as `densify` does). Pools, ReLUs
    and biases are negligible and not counted."""
    h = input_size(output_size(height, alpha), alpha)
    w = input_size(output_size(width, alpha), alpha)
    total = 0
    for layer, stride, dilation in layer_plan(model, alpha):
        k = layer.kernel_size[0] if isinstance(layer, nn.Conv2d) else 2
        h = (h - dilation * (k - 1) - 1) // stride + 1
        w = (w - dilation * (k - 1) - 1) // stride + 1
        if isinstance(layer, nn.Conv2d):
            macs = layer.in_channels * layer.out_channels * k * k * h * w
            total += 2 * macs
    return total
