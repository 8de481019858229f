"""Training: samplers, augmentation, prefetching producers, hard negative mining, trainers.

Importing this package is cheap and never imports torch: producer processes import only
`truth`, `sampler`, `patches`, `augment` and `prefetch` (numpy / PIL / shapely). The
trainer (torch) is imported lazily.
"""

from __future__ import annotations

from .._lazy import attach

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

__getattr__, __all__ = attach(__name__, _LAZY)
