"""What every detector is: the steps the one job (detectors/job.py) calls, and nothing else.

A detector owns what is specific to its task and its network:

* `options` (stage "run": change the heatmap, e.g. density α) and `params` (stage
  "post": slider values), as `Param` schemas;
* `check_model(config)`: refuse a model file made for another task or shape;
* `geometry` + `default_roi_cells`: how the slide is tiled (engine/plan.py conventions);
* `pixel_transform(slide, tissue, config, options)`: optional, a per-pixel colour map
  fitted once per slide and applied to every tile (the metastasis stain normalisation);
* `forward(net, config, options)`: the batch forward the engine streams,
  (N, 3, H, W) float32 -> (N, H', W') map values;
* `finish(store, ...)`: optional, once per run after the last tile (H2G-Net's U-Net);
* `postprocess(heatmap, geometry, values)`: stored map + slider values ->
  `Detections`. It never calls the network (the widget's sliders rely on that).

The job does the rest (slide, model load, tissue, ROI plan, store and resume, runner,
cancel, timings, result, atomic writes), identically for every task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelFileError
from .params import Param, resolve

Forward = Callable[[Any], Any]


@dataclass
class Detections:
    """What post-processing found: `items` are regions (postprocess.regions.Region),
    points or a mask depending on `kind`; `score` the slide-level score (NaN = none)."""

    kind: str  # "regions" | "points" | "mask"
    items: list[Any]
    score: float
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


class Detector:
    """Base class of the registered detectors; subclasses set the class attributes and
    implement `geometry`, `forward` and `postprocess`."""

    task: str = ""
    title: str = ""  # shown in the widget's task list and CLI help
    result_kind: str = "regions"
    architectures: tuple[str, ...] = ()
    default_model: str = "demo"
    options: tuple[Param, ...] = ()
    params: tuple[Param, ...] = ()
    layer_name: str = ""  # the napari result layer ("metastases")
    heatmap_name: str = ""  # the napari heatmap layer ("metastasis heatmap")
    results_file: str = "regions.geojson"
    item_names: tuple[str, str] = ("detection", "detections")  # singular, plural
    # Maps `finish` stores beside the heatmap (engine/maps.py); a detector that lists
    # some takes them as `postprocess(..., maps=)`.
    extra_maps: tuple[str, ...] = ()
    bundled_note: str = ""  # said in the widget when the bundled demo model is used

    # -- schema -------------------------------------------------------------------------------
    def all_params(self) -> tuple[Param, ...]:
        return self.options + self.params

    def resolve_options(self, given: Mapping[str, Any] | None = None,
                        config: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return resolve(self.options, (config or {}).get("options"), given)

    def defaults(self, config: Mapping[str, Any] | None = None,
                 given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Post-processing values: schema defaults < the model file's "thresholds" <
        `given`."""
        return resolve(self.params, (config or {}).get("thresholds"), given)

    # -- model ----------------------------------------------------------------------------------
    def check_model(self, config: Mapping[str, Any]) -> None:
        """ModelFileError when `config` is not a model of this task."""
        where = config.get("_json_path") or "the model"
        task = config.get("task")
        if task is not None and task != self.task:
            raise ModelFileError(
                f"{where} is a {task!r} model; the {self.task!r} detector needs a "
                f"{self.task} model (choose another model file or another task)")
        arch = config.get("architecture")
        if self.architectures and arch not in self.architectures:
            raise ModelFileError(
                f"{where} has architecture {arch!r}; the {self.task!r} detector runs "
                f"{', '.join(self.architectures)}")

    def resolve_model(self, model: Any) -> Any:
        """The model to load for `model`: "demo" means this task's bundled model
        (`default_model`); anything else (a path, a loaded network) is kept."""
        if isinstance(model, str) and model == "demo":
            return self.default_model
        return model

    def model_problem(self, model: str) -> str | None:
        """Why `model` cannot be used (None when it can); cheap: reads only the JSON."""
        from ..models.io import load_config

        try:
            self.check_model(load_config(self.resolve_model(model)))
        except Exception as exc:  # shown to the user as the reason, never raised
            return str(exc)
        return None

    # -- running --------------------------------------------------------------------------------
    def geometry(self, shape0: tuple[int, int], slide_mpp: float | None,
                 config: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def default_roi_cells(self, device: str, options: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def forward(self, net: Any, config: Mapping[str, Any], options: Mapping[str, Any]
                ) -> Forward:
        raise NotImplementedError

    def fingerprint(self, config: Mapping[str, Any], options: Mapping[str, Any],
                    normalisation: dict[str, Any]) -> dict[str, Any]:
        """Everything that changes the numbers in the store: a store made with another
        fingerprint is never resumed into."""
        return {
            **{k: options[k] for k in sorted(options)},
            "weights_sha256": config.get("weights_sha256"),
            "architecture": config.get("architecture"),
            "width": config.get("width"),
            "normalisation": normalisation,
        }

    def pixel_transform(self, slide: Any, tissue: Any, config: Mapping[str, Any],
                        options: Mapping[str, Any]) -> Any:
        """A per-pixel map applied to every tile before the network (uint8 RGB → uint8
        RGB, fitted once per slide, e.g. stain normalisation), or None. Default: None."""
        return None

    def finish(self, store: Any, slide: Any, net: Any, config: Mapping[str, Any],
               options: Mapping[str, Any]) -> None:
        """Once per complete run, after the last tile. Default: nothing."""

    def postprocess(self, heatmap: np.ndarray, geometry: Any, values: Mapping[str, Any]
                    ) -> Detections:
        raise NotImplementedError

    def postprocess_stored(self, heatmap: np.ndarray, geometry: Any,
                           values: Mapping[str, Any], maps: Mapping[str, Any] | None
                           ) -> Detections:
        """`postprocess` with the stored extra maps for a detector that declares them
        (possibly none: a cancelled run has no refinement): what every caller uses."""
        if self.extra_maps:
            return self.postprocess(heatmap, geometry, values, maps=dict(maps or {}))
        return self.postprocess(heatmap, geometry, values)

    # -- outputs --------------------------------------------------------------------------------
    def features(self, detections: Detections) -> list[dict[str, Any]]:
        """QuPath GeoJSON features of `detections` (level-0 px)."""
        raise NotImplementedError

    def summary_items(self, detections: Detections) -> dict[str, Any]:
        return {"count": len(detections)}

    def headline(self, detections: Detections) -> str:
        """One line for the widget: what was found (a detector overrides it to show its
        own clinical numbers, e.g. mitoses per mm²)."""
        score = detections.score
        text = f"{score:.3f}" if math.isfinite(score) else "–"
        n = len(detections)
        return f"Slide score: {text}   ·   {n} {self.item_names[n != 1]}"
