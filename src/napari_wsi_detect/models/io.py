"""Model files: `NAME.safetensors` (weights) + `NAME.json` (everything else).

The JSON says which architecture to build and with what parameters (width, patch,
stride), the resolution the model was trained at, class names, default slider values,
where the training data came from, and the sha256 of the weights file, so a weights file
that does not belong to its JSON is caught. Weights are read with
`safetensors.torch.load_file` only: a model file can never run code (no pickle,
no torch.load).

New architectures plug in with `register_architecture(name, builder)`; `build_model`
and `load_model` then know them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_paths
from .._atomic import sha256_file as _sha256
from ..errors import ModelFileError
from .device import resolve_device
from .scannet import PATCH, STRIDE, ScanNetFCN

FORMAT_VERSION = 1
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

# Slider defaults written into a config that does not set them. Opening of ~2 map cells
# at α = 2 (16 px × 0.243 µm); no area filter — the pathologist tunes both in the viewer.
DEFAULT_THRESHOLDS = {"probability": 0.5, "opening_um": 8.0, "min_area_um2": 0.0}
DEFAULT_CLASS_NAMES = ["normal", "tumour"]
DEFAULT_MPP = 0.243  # Camelyon16 level 0 (µm/px)


def _build_scannet(config: dict) -> nn.Module:
    return ScanNetFCN(
        width=float(config.get("width", 1.0)),
        in_channels=int(config.get("in_channels", 3)),
        num_classes=int(config.get("num_classes", 2)),
    )


# architecture name -> builder(config) -> nn.Module (weights not loaded)
ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {"scannet-fcn": _build_scannet}


def register_architecture(name: str, builder: Callable[[dict], nn.Module]) -> None:
    """Make `name` loadable: `builder(config)` returns the untrained module."""
    ARCHITECTURES[name] = builder


def build_model(config: dict) -> nn.Module:
    """The untrained network a config describes (ModelFileError if it cannot be built)."""
    arch = config.get("architecture")
    if arch not in ARCHITECTURES:
        raise ModelFileError(
            f"model architecture {arch!r} is not one this version knows "
            f"({', '.join(sorted(ARCHITECTURES))}); the model file may be for a newer "
            "napari-wsi-detect or not a model config at all"
        )
    try:
        return ARCHITECTURES[arch](config)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"cannot build a {arch!r} network from this config: {exc}") from exc


# --- writing ---------------------------------------------------------------------------


def _stem(path: str | os.PathLike) -> Path:
    """`dir/NAME` for `dir/NAME`, `dir/NAME.json` or `dir/NAME.safetensors`."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix("")
    return path


def save_model(model: nn.Module, path: str | os.PathLike, config: dict | None = None
               ) -> tuple[Path, Path]:
    """Write `NAME.safetensors` + `NAME.json`; returns both paths.

    `config` adds what the network cannot know (mpp, class_names, thresholds, training,
    version, seed, ...); the architecture parameters come from `model.config()` and a
    config that contradicts them is refused. Each file is written to a temporary name
    and renamed, and the JSON (which carries the weights' sha256) is renamed last, so an
    interrupted save never leaves a pair that loads as something else.
    """
    from safetensors.torch import save_file

    from .. import __version__

    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights_path, json_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")

    arch_config = model.config() if hasattr(model, "config") else {}
    # "_..." keys are run-time annotations added by load_model (paths), not config.
    user = {k: v for k, v in (config or {}).items() if not str(k).startswith("_")}
    for key in ("weights", "weights_sha256", "package_version"):
        user.pop(key, None)
    for key, value in arch_config.items():
        if key in user and user[key] != value:
            raise ModelFileError(
                f"config says {key}={user[key]!r} but the network has {key}={value!r}"
            )
    full: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        **arch_config,
        "mpp": DEFAULT_MPP,
        "class_names": list(DEFAULT_CLASS_NAMES),
        "thresholds": dict(DEFAULT_THRESHOLDS),
        "training": None,
        "version": "0",
        "seed": None,
    }
    thresholds = {**DEFAULT_THRESHOLDS, **(user.pop("thresholds", None) or {})}
    full.update(user)
    full["thresholds"] = thresholds
    if "architecture" not in full:
        raise ModelFileError("config has no 'architecture' and the model does not say")
    full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    full["package_version"] = __version__

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # the JSON (with the weights' sha256) is renamed last: it vouches for the weights
    with atomic_paths(weights_path, json_path) as (tmp_w, tmp_j):
        save_file(tensors, str(tmp_w), metadata={"architecture": str(full["architecture"])})
        full["weights"] = weights_path.name
        full["weights_sha256"] = _sha256(tmp_w)
        tmp_j.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return weights_path, json_path


# --- reading ---------------------------------------------------------------------------


def _find_pair(name_or_path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(json path, weights path or None = take it from the JSON)."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    is_bare_name = os.sep not in text and "/" not in text and not path.suffix
    if is_bare_name and not path.exists():
        bundled = BUNDLED_DIR / f"{text}.json"
        if not bundled.is_file():
            available = sorted(p.stem for p in BUNDLED_DIR.glob("*.json"))
            raise ModelFileError(
                f"no bundled model named {text!r} in {BUNDLED_DIR} "
                f"(bundled: {', '.join(available) or 'none'}). "
                + ("The demo model has not been built in this installation: create it "
                   "with the training script, or pass the path of a model file "
                   "(NAME.safetensors with NAME.json beside it)."
                   if text == "demo" else
                   "Pass the path of a model file (NAME.safetensors with NAME.json beside it).")
            )
        return bundled, None
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        configs = sorted(path.glob("*.json"))
        if len(configs) != 1:
            raise ModelFileError(
                f"model folder {path} must hold exactly one NAME.json model config, found "
                f"{len(configs)}{': ' + ', '.join(p.name for p in configs) if configs else ''};"
                " pass the .json or .safetensors path instead"
            )
        return configs[0], None
    if path.suffix == ".json":
        return path, None
    if path.suffix == ".safetensors":
        json_path = path.with_suffix(".json")
        if not json_path.is_file():
            raise ModelFileError(
                f"{path.name} has no config beside it: expected {json_path}. A model is a "
                "NAME.safetensors + NAME.json pair; the JSON says which network to build"
            )
        return json_path, path
    raise ModelFileError(
        f"{path} is not a model file: expected NAME.safetensors or NAME.json "
        "(PyTorch .pt/.pth pickles are refused because loading them can run code)"
    )


def read_config(json_path: Path) -> dict:
    try:
        config = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            f"model config {json_path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
            "the file is damaged: re-save or re-download the model"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read model config {json_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelFileError(f"model config {json_path} must be a JSON object")
    return config


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], config: dict,
                 weights_path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    arch = f"{config.get('architecture')} width {config.get('width')}"
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(
                f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
        raise ModelFileError(
            f"{weights_path.name} does not fit the network its config describes ({arch}): "
            + "; ".join(parts)
        )
    for key, ref in expected.items():
        found = state[key]
        if tuple(found.shape) != tuple(ref.shape):
            raise ModelFileError(
                f"{weights_path.name}: tensor {key!r} has shape {tuple(found.shape)} but a "
                f"{arch} network needs {tuple(ref.shape)}; the JSON config and the weights "
                "do not belong together (wrong width or architecture?)"
            )
        if not (found.is_floating_point() or found.dtype == ref.dtype):
            raise ModelFileError(
                f"{weights_path.name}: tensor {key!r} has dtype {found.dtype}, expected "
                f"{ref.dtype}"
            )


def load_model(name_or_path: str | os.PathLike = "demo", device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, dict]:
    """(network in eval mode on `device`, config dict) from a model file.

    `name_or_path`: "demo" (or another bundled name), a NAME.json, a NAME.safetensors
    (its JSON beside it), or a folder holding one NAME.json.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_path, weights_path = _find_pair(name_or_path)
    config = read_config(json_path)
    if weights_path is None:
        weights_path = json_path.parent / str(config.get("weights") or json_path.stem
                                              + ".safetensors")
    if not weights_path.is_file():
        raise ModelFileError(
            f"weights file {weights_path} named by {json_path.name} is missing; a model is "
            "a NAME.safetensors + NAME.json pair kept together"
        )
    geometry(config)
    model = build_model(config)
    expected_sha = config.get("weights_sha256")
    if expected_sha and _sha256(weights_path) != expected_sha:
        raise ModelFileError(
            f"{weights_path.name} is not the weights file its config {json_path.name} was "
            "written with (sha256 differs): the pair was mixed up or the file is damaged; "
            "re-save or re-download the model"
        )
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{weights_path} is not a readable safetensors file ({exc}); it is damaged "
            "or not a model weights file"
        ) from exc
    _check_state(model, state, config, weights_path)
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    model.to(resolve_device(device))
    config["_json_path"] = str(json_path)
    config["_weights_path"] = str(weights_path)
    return model, config


def geometry(config: dict) -> tuple[int, int]:
    """(patch, stride) of a loaded config, checked against what the network can do."""
    patch, stride = int(config.get("patch", PATCH)), int(config.get("stride", STRIDE))
    if config.get("architecture") == "scannet-fcn" and (patch, stride) != (PATCH, STRIDE):
        raise ModelFileError(
            f"a scannet-fcn model has patch {PATCH} and stride {STRIDE}; the config says "
            f"patch {patch}, stride {stride}"
        )
    return patch, stride
