"""Fast ScanNet metastasis detection as a detector (METHODS §1).

The network is the no-padding VGG FCN (models/scannet.py) made dense with anchor layers
(models/anchor.py) at density α, optionally after stain normalisation of each tile
towards the model's reference (stain.py, fitted once per slide); the map is the tumour probability at output stride
32/α model px; post-processing is threshold (optionally with hysteresis), opening, closing and connected
regions (postprocess/regions.py) with the slide score = the map's maximum.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Detections, Detector, Forward
from .params import Param

ALPHA = Param(
    "alpha", "Density α", 2, 1, 8, choices=(1, 2, 4, 8), stage="run", integer=True,
    help="Dense coefficient: the map has one value every 32/α model pixels. α = 2 finds "
         "small metastases better than α = 1 at about the same cost; 4 and 8 are finer and "
         "cost more.")
STAIN_NORMALISATION = Param(
    "stain_normalisation", "Stain normalisation", "none", 0, 0,
    choices=("none", "macenko", "reinhard"), stage="run",
    help="Map the slide's H&E colours onto the model's training stain before the "
         "network (fitted once per slide on a low-resolution level over the tissue): "
         "macenko (stain vectors and strengths) or reinhard (colour statistics); for a "
         "slide from another scanner or lab. Needs the model's stain_reference.")
THRESHOLD = Param(
    "threshold", "Threshold", 0.5, 0.0, 1.0, step=0.01, decimals=2,
    help="Map cells with a tumour probability at or above this form regions.")
OPENING_UM = Param(
    "opening_um", "Opening radius", 8.0, 0.0, 200.0, step=0.5, unit="µm", decimals=1,
    help="Morphological opening of the thresholded map with a disk of this radius: "
         "removes specks and thin bridges smaller than it (0 = none).")
MIN_AREA_UM2 = Param(
    "min_area_um2", "Minimum area", 0.0, 0.0, 1e7, step=100.0, unit="µm²", decimals=0,
    help="Regions smaller than this area are dropped (0 = keep all).")
HYSTERESIS = Param(
    "hysteresis", "Hysteresis", 0.0, 0.0, 0.5, step=0.01, decimals=2,
    help="Grow each region from its cells at or above the threshold into connected "
         "cells down to threshold − hysteresis, so a lesion whose probability is speckled "
         "around the threshold stays one region (0 = plain threshold).")
CLOSING_UM = Param(
    "closing_um", "Closing radius", 0.0, 0.0, 200.0, step=0.5, unit="µm", decimals=1,
    help="Morphological closing after the opening, with a disk of this radius: joins "
         "fragments of one lesion separated by gaps narrower than about twice it and "
         "fills such holes, so a blurred or faint lesion is one region (0 = none).")


class MetastasisDetector(Detector):
    task = "metastases"
    title = "Metastases (Fast ScanNet)"
    result_kind = "regions"
    architectures = ("scannet-fcn",)
    default_model = "demo"
    options = (ALPHA, STAIN_NORMALISATION)
    params = (THRESHOLD, OPENING_UM, MIN_AREA_UM2, HYSTERESIS, CLOSING_UM)
    layer_name = "metastases"
    heatmap_name = "metastasis heatmap"
    results_file = "regions.geojson"
    item_names = ("metastasis region", "metastasis regions")
    bundled_note = ("The bundled demo model was trained on synthetic (phantom) slides only: "
                    "its scores on real tissue are not meaningful.")

    def geometry(self, shape0: tuple[int, int], slide_mpp: float | None,
                 config: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
        from ..engine.plan import MapGeometry
        from ..models.io import geometry as model_geometry

        patch, stride = model_geometry(dict(config))
        return MapGeometry.for_slide(tuple(shape0), slide_mpp, config.get("mpp"),
                                     alpha=int(options["alpha"]), patch=patch,
                                     model_stride=stride)

    def default_roi_cells(self, device: str, options: Mapping[str, Any]) -> int:
        from ..engine.plan import default_roi_cells

        return default_roi_cells(str(device), int(options["alpha"]))

    def pixel_transform(self, slide: Any, tissue: Any, config: Mapping[str, Any],
                        options: Mapping[str, Any]) -> Any:
        from ..stain import fit_slide

        return fit_slide(slide, tissue, str(options["stain_normalisation"]),
                         config.get("stain_reference"))

    def forward(self, net: Any, config: Mapping[str, Any], options: Mapping[str, Any]
                ) -> Forward:
        from ..models.anchor import densify

        return densify(net, int(options["alpha"]))

    def postprocess(self, heatmap: np.ndarray, geometry: Any, values: Mapping[str, Any]
                    ) -> Detections:
        from ..postprocess.regions import extract_regions, slide_score

        t = time.perf_counter()
        regions = extract_regions(heatmap, geometry, threshold=float(values["threshold"]),
                                  opening_um=float(values["opening_um"]),
                                  min_area_um2=float(values["min_area_um2"]),
                                  hysteresis=float(values["hysteresis"]),
                                  closing_um=float(values["closing_um"]))
        return Detections("regions", regions, slide_score(heatmap),
                          seconds=time.perf_counter() - t)

    def features(self, detections: Detections) -> list[dict[str, Any]]:
        from ..annotations.geojson import regions_to_features

        return regions_to_features(detections.items)

    def summary_items(self, detections: Detections) -> dict[str, Any]:
        return {"region_count": len(detections),
                "regions": [r.to_dict() for r in detections.items]}
