"""Registry of detection tasks: one small Detector per task on the shared engine.

`get_detector(task)` and `available()` are what the widget, the CLI and batch use; none
of them names a task. Adding a detector: docs/architecture.md, "Adding a detector".
"""

from __future__ import annotations

from typing import Any

from ..errors import WsiDetectError

# task -> "module:Class"; imported on first use so `import napari_wsi_detect` stays light.
_REGISTRY: dict[str, str] = {
    "metastases": "napari_wsi_detect.detectors.metastases:MetastasisDetector",
    "mitoses": "napari_wsi_detect.detectors.mitoses:MitosisDetector",
    "tumour": "napari_wsi_detect.detectors.tumour:TumourDetector",
}
_INSTANCES: dict[str, Any] = {}


class UnknownTaskError(WsiDetectError):
    """No detector is registered under that task name."""


def register_detector(task: str, target: str) -> None:
    """Register `target` ("package.module:Class") as the detector of `task`."""
    _REGISTRY[task] = target
    _INSTANCES.pop(task, None)


def tasks() -> list[str]:
    return list(_REGISTRY)


def get_detector(task: str) -> Any:
    if task not in _REGISTRY:
        raise UnknownTaskError(
            f"unknown task {task!r}; available: {', '.join(_REGISTRY)}")
    if task not in _INSTANCES:
        import importlib

        module, _, name = _REGISTRY[task].partition(":")
        _INSTANCES[task] = getattr(importlib.import_module(module), name)()
    return _INSTANCES[task]


def available() -> list[Any]:
    """Every registered detector, in registration order."""
    return [get_detector(t) for t in _REGISTRY]


__all__ = ["UnknownTaskError", "available", "get_detector", "register_detector", "tasks"]
