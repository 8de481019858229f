"""Pick the torch device a run uses: "auto" = CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


def _tf32_flags() -> list[tuple[object, str, object]]:
    """(object, attribute, value meaning "no TF32") of the flags that let CUDA round fp32
    to TF32. torch >= 2.9 has per-backend `fp32_precision` strings; mixing them with the
    legacy `allow_tf32` booleans makes torch raise, so only one API is ever touched."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision") and hasattr(
            matmul, "fp32_precision"):
        return [(cudnn_conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextlib.contextmanager
def fp32_exact(device: str | torch.device) -> Iterator[None]:
    """Inside: CUDA convolutions and matmuls in true fp32 (TF32 off); the flags are put
    back on exit. cuDNN's default is TF32 for convolutions (10-bit mantissa: probabilities
    off by ~1e-3, so the exactness test fails on Ampere and later). Scoped per forward, not
    per process: the caller's own TF32 choice outside a run is left alone. No-op off CUDA."""
    if torch.device(device).type != "cuda":
        yield
        return
    flags = _tf32_flags()
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in flags]
    try:
        for obj, name, off in flags:
            setattr(obj, name, off)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
