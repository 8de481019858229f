"""Training losses for the patch classifier.

Fast ScanNet trains a plain two-class softmax cross-entropy on 244×244 patches (one
output cell per patch). Class weights are optional: with the sampler's balanced class
probabilities they are rarely needed, but they let a user push recall (weight tumour up)
without changing the sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def patch_logits(output: torch.Tensor) -> torch.Tensor:
    """(N, C) logits from the FCN's (N, C, 1, 1) output on 244×244 patches."""
    if output.dim() == 4:
        if output.shape[-2:] != (1, 1):
            raise ValueError(
                f"expected one output cell per patch, got a {tuple(output.shape[-2:])} map; "
                "training patches must be exactly 244×244"
            )
        return output[:, :, 0, 0]
    return output


def cross_entropy(output: torch.Tensor, labels: torch.Tensor,
                  class_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Mean softmax cross-entropy over the batch, optionally class-weighted."""
    logits = patch_logits(output)
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
        if weight.numel() != logits.shape[1]:
            raise ValueError(
                f"{weight.numel()} class weights given for {logits.shape[1]} classes"
            )
    return F.cross_entropy(logits, labels, weight=weight)
