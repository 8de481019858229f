"""Training: samplers, augmentation, prefetching producers, hard negative mining, the
shared training loop and one task module per task.

Importing this package is cheap and never imports torch: producer processes import only
`truth`, `sampler`, `patches`, `augment` and `prefetch` (numpy / PIL / shapely), and the
CLI reads each task's config class (torch-free) to build its flags. The loop and the
tasks' training code import torch when they run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .._lazy import attach

_P = "napari_wsi_detect.training"
_LAZY = {
    "AugmentConfig": f"{_P}.augment",
    "augment": f"{_P}.augment",
    "PatchSampler": f"{_P}.sampler",
    "SlideCandidates": f"{_P}.sampler",
    "build_candidates": f"{_P}.sampler",
    "PatchBatchSource": f"{_P}.patches",
    "read_patch": f"{_P}.patches",
    "Prefetcher": f"{_P}.prefetch",
    "ProducerError": f"{_P}.prefetch",
    "load_truth": f"{_P}.truth",
    "mine_hard_negatives": f"{_P}.hard_negatives",
    "expand_slides": f"{_P}.slides",
    "pair_annotations": f"{_P}.slides",
    "latest_checkpoint": f"{_P}.checkpoints",
    "TrainingTask": f"{_P}.loop",
    "fit": f"{_P}.loop",
    "TrainConfig": f"{_P}.metastases",
    "train_metastases": f"{_P}.metastases",
}

# Task -> (config dataclass, train function, one-line title), as "module:name" strings so
# nothing is imported until asked. `wsi-detect train TASK` is built from this table: its
# flags from the config's fields that carry a "help" in their metadata. A train function
# takes (slides, out, config, annotations=, val_slides=, val_annotations=, resume=,
# progress=) and returns a result with `.model_path`.
TRAINING_TASKS: dict[str, tuple[str, str, str]] = {
    "metastases": (f"{_P}.metastases:TrainConfig", f"{_P}.metastases:train_metastases",
                   "Fast ScanNet metastasis classifier (244 px patches)"),
    "mitoses": (f"{_P}.mitoses:MitosisTrainConfig", f"{_P}.mitoses:train_mitoses",
                "SegMitos mitosis segmenter (MIDOG 2021 crops, concentric loss)"),
    "tumour": (f"{_P}.tumour:TumourTrainConfig", f"{_P}.tumour:train_tumour",
               "H2G-Net tumour segmentation (MobileNetV2 patches + U-Net refinement)"),
}


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def training_task(task: str) -> tuple[type, Callable[..., Any], str]:
    """(config class, train function, title) of `task`."""
    from ..errors import WsiDetectError

    if task not in TRAINING_TASKS:
        raise WsiDetectError(f"no training for task {task!r}; available: "
                             f"{', '.join(TRAINING_TASKS)}")
    config, train, title = TRAINING_TASKS[task]
    return _resolve(config), _resolve(train), title


__getattr__, _names = attach(__name__, _LAZY)
__all__ = [*_names, "TRAINING_TASKS", "training_task"]
