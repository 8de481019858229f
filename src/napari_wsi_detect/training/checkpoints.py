"""Training checkpoints as safetensors + JSON, never pickle.

`OUT/checkpoints/step-NNNNNNN/` holds `model.safetensors` + `model.json` (models.io),
`optimizer.safetensors` (every optimiser and RNG tensor) and `state.json` (step, stage,
optimiser scalars and param groups, the Python and NumPy RNG states, whatever the task
adds). A checkpoint folder appears whole or not at all (written under a temporary name,
then renamed), and `latest.json` names the newest one.

Restoring every RNG, not only the model and optimiser, is what makes a resumed run
bit-identical to an uninterrupted one: dropout draws from torch's global generator.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    # Our own code draws from explicit Generators; the legacy global states are seeded
    # (and checkpointed) only for third-party code that might use them.
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002
    torch.manual_seed(seed)


def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state into tensors (for safetensors) and JSON scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(ckpt_root: Path, step: int, stage: int, model: torch.nn.Module,
                    opt: torch.optim.Optimizer, config: dict, extra: dict,
                    keep: int = 2) -> Path:
    """Write checkpoint `step` (model file config `config`, `extra` into state.json) and
    keep the newest `keep` of them (all when `keep` <= 0)."""
    from safetensors.torch import save_file

    from ..models.io import save_model

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, tmp / "model", config)
    tensors, meta = optimizer_to_files(opt)
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "stage": stage, "optimizer": meta,
             "python_random": _py_random_state(), "numpy_random": _np_random_state(), **extra}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json_atomic(ckpt_root / "latest.json", {"step": step, "path": final.name})
    old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _py_random_state() -> list:
    v, internal, gauss = random.getstate()
    return [v, list(internal), gauss]


def _np_random_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint folder of the run in `out`, or None."""
    out = Path(out)
    pointer = out / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / json.loads(pointer.read_text())["path"]
    return path if path.is_dir() else None


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
                    ) -> dict:
    """Restore model, optimiser and RNG state in place; return state.json."""
    from safetensors.torch import load_file

    from ..models.io import load_model

    loaded, _ = load_model(path / "model.json", device="cpu")
    model.load_state_dict(loaded.state_dict())
    tensors = load_file(str(path / "optimizer.safetensors"))
    state = json.loads((path / "state.json").read_text())
    optimizer_from_files(opt, tensors, state["optimizer"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = state["python_random"]
    random.setstate((v, tuple(internal), gauss))
    npst = state["numpy_random"]
    legacy = (npst["name"], np.array(npst["keys"], np.uint32), npst["pos"],
              npst["has_gauss"], npst["cached"])
    np.random.set_state(legacy)  # noqa: NPY002
    return state


__all__ = ["latest_checkpoint", "load_checkpoint", "optimizer_from_files",
           "optimizer_to_files", "save_checkpoint", "seed_everything", "write_json_atomic"]
