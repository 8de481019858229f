"""Pick the torch device a run uses: "auto" = CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from ..errors import WsiDetectError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """torch.device for "auto" | "cpu" | "cuda" | "cuda:N" | "mps".

    An explicitly requested accelerator that is absent is an error (a silent fall-back
    to CPU would make a 1-minute slide take an hour without saying why); "auto" never is.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise WsiDetectError(
                f"device {device!r} was requested but this PyTorch build "
                f"({torch.__version__}) sees no CUDA GPU; use --device auto or cpu"
            )
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise WsiDetectError(
                f"device {device!r} was requested but only {torch.cuda.device_count()} "
                "CUDA GPU(s) are visible"
            )
        return torch.device(name)
    if kind == "mps":
        if not _mps_available():
            raise WsiDetectError(
                "device 'mps' (Apple GPU) was requested but is not available here; "
                "use --device auto or cpu"
            )
        return torch.device("mps")
    raise WsiDetectError(
        f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}"
    )
