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
import math
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
from .h2g import build_h2g
from .scannet import PATCH, STRIDE, ScanNetFCN
from .segmitos import ARCHITECTURE as SEGMITOS
from .segmitos import HALO, OUTPUT_STRIDE, build_segmitos

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
ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {"scannet-fcn": _build_scannet,
                                                          SEGMITOS: build_segmitos,
                                                          "h2g-net": build_h2g}


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
    validate_config(full, stem.with_suffix(".json"))
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


# A model config is a few kB; anything much larger is not one (and is not parsed).
_MAX_CONFIG_BYTES = 16 * 2**20


def read_config(json_path: Path) -> dict:
    """The model config at `json_path`, every field checked (`validate_config`)."""
    try:
        if json_path.stat().st_size > _MAX_CONFIG_BYTES:
            raise ModelFileError(
                f"model config {json_path} is {json_path.stat().st_size} bytes: far too "
                "large for a model config (a few kB); this is not a model JSON"
            )
        config = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            f"model config {json_path} is not valid JSON ({exc.msg}, line {exc.lineno}); "
            "the file is damaged: re-save or re-download the model"
        ) from exc
    except RecursionError as exc:
        raise ModelFileError(
            f"model config {json_path} is nested too deeply to be a model config"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read model config {json_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelFileError(f"model config {json_path} must be a JSON object")
    validate_config(config, json_path)
    return config


# --- validation ---------------------------------------------------------------------------
# Ranges of the numbers a config may hold; a value outside them is refused with the field
# and the range named, before anything is built (a width of 1e5 would allocate petabytes).
_INT_FIELDS = {  # name: (minimum, maximum)
    "format_version": (1, FORMAT_VERSION),
    "in_channels": (1, 16),
    "num_classes": (1, 1000),
    "patch": (1, 8192),
    "stride": (1, 8192),
}
_FLOAT_FIELDS = {  # name: (exclusive minimum, inclusive maximum, unit)
    "width": (0.0, 4.0, ""),
    "mpp": (0.01, 20.0, " µm/px"),
}
# Slider defaults: known keys have ranges; other detectors' keys must be finite numbers.
# "probability" is the legacy name of "threshold": both are accepted and both checked.
_THRESHOLD_RANGES = {
    "threshold": (0.0, 1.0, ""),
    "probability": (0.0, 1.0, ""),
    "opening_um": (0.0, 200.0, " µm"),
    "min_area_um2": (0.0, 1e7, " µm²"),
    "hysteresis": (0.0, 0.5, ""),
    "closing_um": (0.0, 200.0, " µm"),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(where: str, field: str, rule: str, value: Any) -> ModelFileError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ModelFileError(
        f"model config {where}: {field!r} must be {rule}, got {shown}; fix the JSON "
        "or re-save the model"
    )


def _check_number(where: str, field: str, value: Any, lo: float, hi: float, unit: str = "",
                  lo_open: bool = False) -> float:
    bracket = "(" if lo_open else "["
    rule = f"a number in {bracket}{lo:g}, {hi:g}]{unit}"
    if not _is_number(value) or not math.isfinite(value):
        raise _bad(where, field, rule, value)
    if (value <= lo if lo_open else value < lo) or value > hi:
        raise _bad(where, field, rule, value)
    return float(value)


def _check_weights_name(where: str, value: Any) -> None:
    rule = ("the weights file's name, relative to the JSON's folder and inside it "
            "(e.g. \"NAME.safetensors\")")
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _bad(where, "weights", rule, value)
    if os.path.isabs(value) or Path(value).drive or value.startswith(("/", "\\")):
        raise _bad(where, "weights", rule, value)
    norm = os.path.normpath(value.replace("\\", "/"))
    if norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("../") or norm == ".":
        raise _bad(where, "weights", rule, value)


def validate_config(config: dict, json_path: str | os.PathLike | None = None) -> dict:
    """Check every field of a model config, before anything is built from it.

    Types and ranges: integers (format_version, in_channels, num_classes, patch,
    stride), numbers (width in (0, 4], mpp in (0.01, 20] µm/px), thresholds (threshold /
    its legacy name probability in [0, 1], opening_um in [0, 200] µm, min_area_um2 in
    [0, 1e7] µm², any other finite), class_names (strings), normalisation (3 finite
    numbers each, std > 0), the weights file name (relative, inside the JSON's folder),
    weights_sha256 (64 hex digits). Unknown fields are left alone (newer files). Raises
    ModelFileError naming the file, the field and the valid range. Returns `config`.
    """
    where = str(json_path) if json_path is not None else "(in memory)"
    arch = config.get("architecture")
    if arch is not None and (not isinstance(arch, str) or not arch):
        raise _bad(where, "architecture", "the architecture's name (a string)", arch)
    for field in ("task", "name", "created", "package_version"):
        value = config.get(field)
        if value is not None and not isinstance(value, str):
            raise _bad(where, field, "a string", value)
    version = config.get("version")
    if version is not None and not (isinstance(version, str) or _is_number(version)):
        raise _bad(where, "version", "a string", version)
    for field, (lo, hi) in _INT_FIELDS.items():
        if field not in config or (field == "format_version" and config[field] is None):
            continue
        value = config[field]
        if not _is_number(value) or not math.isfinite(value) or value != int(value):
            raise _bad(where, field, f"a whole number in [{lo}, {hi}]", value)
        if not lo <= value <= hi:
            if field == "format_version" and value > hi:
                raise ModelFileError(
                    f"model config {where} has format_version {value}: it was written by a "
                    f"newer napari-wsi-detect (this one reads up to {FORMAT_VERSION}); "
                    "upgrade the package"
                )
            raise _bad(where, field, f"a whole number in [{lo}, {hi}]", value)
        config[field] = int(value)
    for field, (lo, hi, unit) in _FLOAT_FIELDS.items():
        if field in config and not (field == "mpp" and config[field] is None):
            _check_number(where, field, config[field], lo, hi, unit, lo_open=True)
    seed = config.get("seed")
    if seed is not None and (not _is_number(seed) or not math.isfinite(seed)
                             or seed != int(seed)):
        raise _bad(where, "seed", "a whole number or null", seed)
    names = config.get("class_names")
    if names is not None and (not isinstance(names, list)
                              or not all(isinstance(n, str) for n in names)):
        raise _bad(where, "class_names", "a list of strings", names)
    if isinstance(names, list) and "num_classes" in config and len(names) not in (
            0, config["num_classes"]):
        raise _bad(where, "class_names", f"{config['num_classes']} names (num_classes)", names)
    thresholds = config.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, dict):
            raise _bad(where, "thresholds", "an object of slider defaults", thresholds)
        for key, value in thresholds.items():
            field = f"thresholds.{key}"
            if key in _THRESHOLD_RANGES:
                lo, hi, unit = _THRESHOLD_RANGES[key]
                _check_number(where, field, value, lo, hi, unit)
            elif not _is_number(value) or not math.isfinite(value):
                raise _bad(where, field, "a finite number", value)
    options = config.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise _bad(where, "options", "an object of numbers or names", options)
        for key, value in options.items():
            # a named choice (stain_normalisation) is checked by the detector's Param
            if isinstance(value, str) and value.strip():
                continue
            if not _is_number(value) or not math.isfinite(value):
                raise _bad(where, f"options.{key}", "a finite number or a name", value)
    for nkey in ("normalisation", "normalization"):
        norm = config.get(nkey)
        if norm is None:
            continue
        if not isinstance(norm, dict):
            raise _bad(where, nkey, 'an object {"mean": [r, g, b], "std": [r, g, b]}', norm)
        for part in ("mean", "std"):
            if part not in norm:
                continue
            value = norm[part]
            values = value if isinstance(value, list) else [value]
            rule = "a number or 3 numbers in [0, 255]" + (", above 0" if part == "std" else "")
            if len(values) not in (1, 3) or not all(
                    _is_number(v) and math.isfinite(v) and 0 <= v <= 255 for v in values):
                raise _bad(where, f"{nkey}.{part}", rule, value)
            if part == "std" and min(values) <= 0:
                raise _bad(where, f"{nkey}.{part}", rule, value)
    if config.get("weights") is not None:
        _check_weights_name(where, config["weights"])
    sha = config.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64
                                and all(c in "0123456789abcdef" for c in sha.lower())):
        raise _bad(where, "weights_sha256", "64 hexadecimal digits (sha256) or null", sha)
    return config


def weights_path_of(json_path: Path, config: dict) -> Path:
    """The weights file a config names, resolved relative to its JSON; a name that
    leaves the JSON's folder (`../`, absolute) is refused."""
    name = config.get("weights")
    if name is None:
        return json_path.parent / (json_path.stem + ".safetensors")
    _check_weights_name(str(json_path), name)
    return json_path.parent / os.path.normpath(str(name).replace("\\", "/"))


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


def load_config(name_or_path: str | os.PathLike = "demo") -> dict:
    """The validated JSON config of a model (same names as `load_model`), without
    reading its weights; `_json_path` says where it came from."""
    json_path, _ = _find_pair(name_or_path)
    config = read_config(json_path)
    config["_json_path"] = str(json_path)
    return config


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
        weights_path = weights_path_of(json_path, config)
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
    seg = (OUTPUT_STRIDE + 2 * HALO, OUTPUT_STRIDE)
    if config.get("architecture") == SEGMITOS and (patch, stride) != seg:
        raise ModelFileError(
            f"a {SEGMITOS} model has patch {seg[0]} and stride {seg[1]}; the config says "
            f"patch {patch}, stride {stride}"
        )
    return patch, stride
