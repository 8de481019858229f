"""CPU inference backends: the same dense forward, run by another engine.

A detector's forward (`Detector.forward`: DenseScanNet, segmitos.TiledForward,
tumour.PatchForward) is glue (crop, pad, softmax, tissue gate) around one network
part, `forward.core_module()`. A backend replaces only that part
(`forward.with_core(engine)`), so every backend keeps the contract
(N, 3, H, W) float32 -> (N, H', W') map values and the glue exists once.

* "fp32": the torch path unchanged — exact, the reference of every test.
* "bf16": torch autocast bfloat16 (fast only where the CPU has native bf16).
* "compile": torch.compile(dynamic=True) of the network part (edge ROIs are smaller).
* "onnxruntime", "openvino": the network part exported once to ONNX (torch.onnx, dynamic
  N, H, W; dilations and stride-1 pools are plain Conv/MaxPool attributes, tested) and
  run by ONNX Runtime / OpenVINO in float32. "openvino-bf16": OpenVINO's bf16 inference
  precision (its own default on bf16 CPUs — we ask for it explicitly).
* "onnxruntime-int8": static int8 quantisation (QDQ, per-channel weights) calibrated on
  phantom tissue ROIs.

Exports live under `cache_root()/backends/`, keyed by a digest of the weights, the
network part's geometry and the versions, and are written atomically.

"auto" (`resolve_backend`) = the first backend of the task's `AUTO_ORDER` that is
installed and runs natively on this CPU; the order is the measured speed (`wsi-detect
bench backends`, docs/models.md) restricted to backends within `AUTO_TOLERANCE` of fp32
on that task's bundled network. On CUDA/MPS "auto" is "fp32" (TF32 handling is the
engine's).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WsiDetectError
from .backend_names import BACKEND_CHOICES, BACKENDS, DEFAULT_BACKEND

# Packages each backend needs, and the pip command that installs them.
_NEEDS = {"onnxruntime": ("onnx", "onnxruntime"), "onnxruntime-int8": ("onnx", "onnxruntime"),
          "openvino": ("onnx", "openvino"), "openvino-bf16": ("onnx", "openvino")}
_BF16 = ("bf16", "openvino-bf16")
# Max |Δp| against fp32 each backend is held to (tests, bench): float32 engines differ
# only in summation order; bf16 keeps 8 bits of mantissa; int8 is measured, not assumed.
TOLERANCE = {"fp32": 0.0, "compile": 1e-4, "onnxruntime": 1e-4, "openvino": 1e-4,
             "bf16": 3e-2, "openvino-bf16": 3e-2, "onnxruntime-int8": 1e-1}
# What "auto" may choose: max |Δp| within 1e-2 of fp32 on a ROI of phantom tissue AND
# over the whole demo-phantom map, with the same regions / FROC (docs/models.md,
# "Backends").
AUTO_TOLERANCE = 1e-2
# Per task, fastest first, as measured by `wsi-detect bench backends` on a Zen 4
# (avx512_bf16) CPU; only backends that met AUTO_TOLERANCE on the task's bundled network
# are listed. bf16 (torch or OpenVINO) fails it: 1.5e-2 over the whole metastasis map
# (same regions and FROC, but not within 1e-2), 2-5e-2 on SegMitos and H2G-Net; int8 is
# 1e-2 to 0.27 off. So on this CPU auto only ever picks float32 engines (max |Δp| ~1e-6).
# A task not listed gets fp32: an untested network is not guessed at.
AUTO_ORDER = {"metastases": ("openvino", "onnxruntime", "fp32"),
              "mitoses": ("openvino", "onnxruntime", "fp32"),
              "tumour": ("onnxruntime", "openvino", "fp32")}


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16() -> bool:
    """True where bf16 matmuls run in hardware (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def missing_packages(backend: str) -> list[str]:
    return [p for p in _NEEDS.get(backend, ()) if importlib.util.find_spec(p) is None]


def check_backend(backend: str) -> str:
    """`backend` when it is a known name whose packages are installed, else a
    WsiDetectError that says which pip command installs them."""
    name = str(backend).strip().lower()
    if name not in BACKEND_CHOICES:
        raise WsiDetectError(f"unknown backend {backend!r}; choose one of "
                             f"{', '.join(BACKEND_CHOICES)}")
    missing = missing_packages(name)
    if missing:
        raise WsiDetectError(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed: "
            f"pip install {' '.join(missing)}  (or pip install 'napari-wsi-detect[speed]')")
    return name


def _device_type(device: Any) -> str:
    from .device import resolve_device

    return resolve_device(device).type  # "auto" -> the device a run would get


def available_backends(device: Any = "cpu") -> list[str]:
    """Backends that can run here: installed, and (bf16 kinds) native on this CPU."""
    if _device_type(device) != "cpu":
        return ["fp32", "bf16", "compile"]
    return [b for b in BACKENDS if not missing_packages(b)
            and (b not in _BF16 or native_bf16())]


def resolve_backend(backend: str, device: Any = "cpu", task: str = "") -> str:
    """The concrete backend for `backend` ("auto" -> see module docstring) on `device`
    (a torch.device or a name such as "auto" or "cuda:0") for the detector `task`."""
    name = check_backend(backend)
    if name in _NEEDS and _device_type(device) != "cpu":
        raise WsiDetectError(f"backend {name!r} runs on the CPU only; use --device cpu, or "
                             "on a GPU backend fp32, bf16 or compile")
    if name != "auto":
        return name
    if _device_type(device) != "cpu":
        return "fp32"
    usable = set(available_backends(device))
    return next(b for b in AUTO_ORDER.get(task, ("fp32",)) if b in usable)


def is_exact(backend: str) -> bool:
    """Whether maps of `backend` may be mixed with fp32 maps (same store, resumed)."""
    return backend == "fp32"


# -- applying a backend -------------------------------------------------------------------------
def core_kind(forward: Any) -> tuple[str, tuple[int, ...]]:
    """(a name for the network part, an example input shape for export/compile)."""
    from ..detectors.tumour import PatchForward
    from .anchor import DenseScanNet, input_size
    from .segmitos import ALIGN, HALO, OUTPUT_STRIDE, TiledForward

    if isinstance(forward, DenseScanNet):
        a = forward.alpha
        return f"anchor-a{a}", (1, 3, input_size(2, a), input_size(3, a))
    if isinstance(forward, TiledForward):
        side = 2 * HALO + 4 * OUTPUT_STRIDE
        return "segmitos", (1, 3, side, side + ALIGN)
    if isinstance(forward, PatchForward):
        return "h2g-patch", (2, 3, forward.patch, forward.patch)
    raise WsiDetectError(f"no backend knows how to run a {type(forward).__name__}; "
                         "use backend='fp32'")


def apply_backend(forward: Any, backend: str, *, device: Any = "cpu",
                  calibration: Sequence[torch.Tensor] | None = None,
                  cache_dir: Path | None = None) -> Any:
    """`forward` run by `backend` (a concrete name or "auto"). `calibration`: input
    batches for int8 (default: phantom tissue ROIs)."""
    name = resolve_backend(backend, device)
    if name == "fp32":
        return forward
    core = forward.core_module().eval()
    if name == "bf16":
        return forward.with_core(_Autocast(core))
    if name == "compile":
        return forward.with_core(torch.compile(core, dynamic=True))
    kind, shape = core_kind(forward)
    onnx_path = export_onnx(core, kind, shape, cache_dir)
    threads = torch.get_num_threads()
    if name == "onnxruntime":
        return forward.with_core(_OrtCore(onnx_path, threads))
    if name == "onnxruntime-int8":
        q = quantised_onnx(onnx_path, forward, shape, calibration)
        return forward.with_core(_OrtCore(q, threads))
    return forward.with_core(_OpenVinoCore(onnx_path, threads,
                                           "bf16" if name == "openvino-bf16" else "f32"))


class _Autocast(nn.Module):
    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.core(x).float()


def _numpy_input(x: torch.Tensor) -> Any:
    # Engines take dense NCHW float32; the runner's channels_last tensor is one copy away.
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class _OrtCore(nn.Module):
    """An ONNX Runtime session as the network part (CPU execution provider)."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = max(1, threads), 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # the exporter leaves unused constants: not news
        self.session = ort.InferenceSession(str(path), so,
                                            providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": _numpy_input(x)})[0])


class _OpenVinoCore(nn.Module):
    """An OpenVINO CPU model as the network part, compiled once per input shape: static
    shapes let OpenVINO pick its kernels and memory plan (ROIs come in a few shapes)."""

    MAX_SHAPES = 8

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        super().__init__()
        import openvino as ov

        self._ov = ov
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.config = {"INFERENCE_PRECISION_HINT": precision,
                       "INFERENCE_NUM_THREADS": max(1, threads),
                       "PERFORMANCE_HINT": "LATENCY",
                       # no pinning: the runner's reader threads and other processes share
                       # these cores; pinned OpenVINO threads then wait on them
                       "ENABLE_CPU_PINNING": False}
        self._compiled: dict[tuple[int, ...], Any] = {}

    def _request(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._compiled:
            if len(self._compiled) >= self.MAX_SHAPES:
                self._compiled.pop(next(iter(self._compiled)))
            model = self.model.clone()
            model.reshape({0: self._ov.PartialShape(list(shape))})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self._compiled[shape] = compiled.create_infer_request()
        return self._compiled[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = _numpy_input(x)
        out = self._request(tuple(arr.shape)).infer({0: arr})
        # the request reuses its output buffer on the next call: copy
        return torch.from_numpy(next(iter(out.values())).copy())


# -- exports --------------------------------------------------------------------------------
def backend_cache_dir(cache_dir: Path | None = None) -> Path:
    from .._napari.run_files import cache_root  # no napari import: a plain path helper

    return Path(cache_dir) if cache_dir is not None else cache_root() / "backends"


def weights_digest(module: nn.Module, kind: str) -> str:
    """sha256 of the network part's tensors, its kind (α, geometry) and the exporter's
    version: a new export whenever any of them changes."""
    h = hashlib.sha256(f"{kind}|torch {torch.__version__}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _cached(path: Path, write: Callable[[Path], None]) -> Path:
    """`path`, written by `write(tmp)` and renamed into place when it does not exist."""
    from .._atomic import atomic_path

    if not path.exists():
        with atomic_path(path) as tmp:
            write(tmp)
    return path


def export_onnx(core: nn.Module, kind: str, shape: tuple[int, ...],
                cache_dir: Path | None = None) -> Path:
    """The network part as ONNX (dynamic N, H, W), cached by `weights_digest`."""
    path = backend_cache_dir(cache_dir) / f"{kind}-{weights_digest(core, kind)}.onnx"

    def write(tmp: Path) -> None:
        import warnings

        example = torch.rand(*shape)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings of the shape checks
            # dynamo=False: the TorchScript exporter handles dynamic H, W here without
            # onnxscript; opset 17 is read by every ONNX Runtime/OpenVINO of the pins.
            torch.onnx.export(core, (example,), str(tmp), input_names=["x"],
                              output_names=["y"], opset_version=17, dynamo=False,
                              dynamic_axes={"x": {0: "n", 2: "h", 3: "w"},
                                            "y": {0: "n", 2: "hy", 3: "wy"}})

    return _cached(path, write)


def calibration_inputs(forward: Any, shape: tuple[int, ...], n: int = 8,
                       normalisation: Any = None) -> list[torch.Tensor]:
    """`n` phantom tissue crops of `shape`'s size, normalised as the runner does (mean
    0.5, std 0.25 unless `normalisation` is given): int8 activation ranges from
    tissue-like input, not noise."""
    import numpy as np

    from ..phantom import render_phantom_region

    _, _, h, w = shape
    rgb = render_phantom_region(3000, 3000, w * 4, h * 2, seed=1, size=(12000, 12000))
    mean = np.asarray(getattr(normalisation, "mean", (0.5,) * 3), np.float32)
    std = np.asarray(getattr(normalisation, "std", (0.25,) * 3), np.float32)
    out = []
    for i in range(n):
        r, c = (i // 4) * h, (i % 4) * w
        crop = (rgb[r:r + h, c:c + w].astype(np.float32) / 255 - mean) / std
        out.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None])
    return out


def quantised_onnx(onnx_path: Path, forward: Any, shape: tuple[int, ...],
                   calibration: Sequence[torch.Tensor] | None = None) -> Path:
    """Static int8 (QDQ, per-channel weights, uint8 activations) of `onnx_path`."""
    path = onnx_path.with_name(onnx_path.stem + ("-int8.onnx" if calibration is None
                                                 else f"-int8-{len(calibration)}c.onnx"))

    def write(tmp: Path) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

        batches = list(calibration) if calibration is not None else calibration_inputs(
            forward, shape)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(batches)

            def get_next(self) -> dict[str, Any] | None:
                x = next(self.it, None)
                return None if x is None else {"x": _numpy_input(x)}

        quantize_static(str(onnx_path), str(tmp), Reader(), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

    return _cached(path, write)


__all__ = ["AUTO_ORDER", "AUTO_TOLERANCE", "BACKENDS", "BACKEND_CHOICES", "DEFAULT_BACKEND",
           "TOLERANCE",
           "apply_backend", "available_backends", "check_backend", "cpu_flags", "is_exact",
           "native_bf16", "resolve_backend"]
