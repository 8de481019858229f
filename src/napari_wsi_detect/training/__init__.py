"""Training: samplers, augmentation, prefetching producers, hard negative mining, trainers.

Importing this package is cheap and never imports torch: producer processes import only
`truth`, `sampler`, `patches`, `augment` and `prefetch` (numpy / PIL / shapely). The
trainer (torch) is imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AugmentConfig": "augment",
    "augment": "augment",
    "PatchSampler": "sampler",
    "SlideCandidates": "sampler",
    "build_candidates": "sampler",
    "PatchBatchSource": "patches",
    "read_patch": "patches",
    "Prefetcher": "prefetch",
    "ProducerError": "prefetch",
    "load_truth": "truth",
    "mine_hard_negatives": "hard_negatives",
    "TrainConfig": "trainer",
    "train_metastases": "trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
