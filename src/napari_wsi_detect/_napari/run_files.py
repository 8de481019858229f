"""Where the widget's runs live on disk, and how a saved run folder comes back.

Every widget run streams into a run folder: the one the user opened (a `wsi-detect
TASK --out DIR` folder resumes in the widget) or a per-slide, per-settings folder in the
user cache (`$WSI_DETECT_CACHE` or the platform cache dir), so a napari crash leaves a
resumable partial heatmap, exactly like the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    env = os.environ.get("WSI_DETECT_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-wsi-detect"))


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_key(detector: Any, model: str, options: dict[str, Any], backend: str = "fp32"
            ) -> tuple[str, str]:
    """(model name, fingerprint text) the job will give the store (`backend`: the
    resolved one): read from the model's JSON only (no weights), so the widget knows
    before a run whether a store fits."""
    from napari_wsi_detect.detectors.job import model_identity, run_fingerprint
    from napari_wsi_detect.engine.run import Normalisation
    from napari_wsi_detect.models.io import load_config

    config = load_config(detector.resolve_model(model))
    detector.check_model(config)
    fp = run_fingerprint(detector, config, options,
                         Normalisation.from_config(config).to_dict(), backend)
    return model_identity(config, model), json.dumps(json.loads(json.dumps(fp)), sort_keys=True)


def store_key(store: Any) -> tuple[str, str]:
    return store.model_name, json.dumps(store.params, sort_keys=True)


def cache_run_dir(slide_path: str, shape0: tuple[int, int], task: str,
                  key: tuple[str, str]) -> Path:
    slide = Path(slide_path)
    return (cache_root() / "runs" / f"{slide.stem}-{_digest(str(slide.resolve()), shape0)}"
            / f"{task}-{_digest(key)}")


def load_run(folder: Path, slide_layer: Any, shape0: tuple[int, int]) -> Any:
    """A DetectionResult from a run folder (finished, or a partial heatmap only), checked
    against the slide it is opened on."""
    from napari_wsi_detect.detectors.run_folder import load_result

    return load_result(folder, shape0=shape0,
                       slide_name=getattr(slide_layer, "name", None) or "the slide")
