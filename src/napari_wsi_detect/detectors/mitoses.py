"""SegMitos mitosis detection as a detector (METHODS §2).

The network is the FCN-8s segmenter (models/segmitos.py); the map is its mitosis
probability at output stride 8 model px (2 µm cells at 0.25 µm/px: one float per 4 µm² of
slide, so the map of a whole slide stays a few hundred MB at most). A ROI reads a halo of
192 model px around its block of cells (`patch` = 8 + 2·192): every stored cell is at
least the receptive field away from the edge of the input it came from, so the stitched
map equals one inference over the whole field padded with white (ROIs of a multiple of 4
cells keep the tiles on the network's 32-px grid; the defaults are).

Post-processing (postprocess/blobs.py): Gaussian smoothing (σ in µm), one Otsu
threshold over the whole map, blobs kept when their mean score > min_score (s1) and
their area > min_area_um2 (a1), a detection at each centroid. Clinical figures
(postprocess/mitotic_count.py): count, per mm² of analysed area, per 10 HPF, hotspot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Detections, Detector, Forward
from .params import Param

MIN_SCORE = Param(
    "min_score", "Minimum blob score", 0.5, 0.0, 1.0, step=0.01, decimals=2,
    help="s1: a blob above the Otsu threshold is a mitosis only when its mean (smoothed) "
         "mitosis probability exceeds this.")
MIN_AREA_UM2 = Param(
    "min_area_um2", "Minimum area", 12.0, 0.0, 1000.0, step=1.0, unit="µm²", decimals=0,
    help="a1: blobs of this area or smaller are dropped (the map has 4 µm² cells at "
         "0.25 µm/px; a mitotic figure's blob is typically 10-60 µm²).")
SMOOTHING_UM = Param(
    "smoothing_um", "Smoothing σ", 2.0, 0.0, 20.0, step=0.5, unit="µm", decimals=1,
    help="Standard deviation of the Gaussian that smooths the map before the Otsu "
         "threshold (0 = none): removes tiny noisy responses.")

CPU_ROI_CELLS = 192  # 1536 px of cells + 2 × 192 px halo = 1920² px read per ROI
GPU_ROI_CELLS = 512


def geometry_for(shape0: tuple[int, int], slide_mpp: float | None,
                 model_mpp: float | None) -> Any:
    from ..engine.plan import MapGeometry
    from ..models.segmitos import HALO, OUTPUT_STRIDE

    return MapGeometry.for_slide(tuple(shape0), slide_mpp, model_mpp, alpha=1,
                                 patch=OUTPUT_STRIDE + 2 * HALO, model_stride=OUTPUT_STRIDE)


class MitosisDetector(Detector):
    task = "mitoses"
    title = "Mitoses (SegMitos)"
    result_kind = "points"
    architectures = ("segmitos-fcn",)
    default_model = "mitoses"
    options = ()
    params = (MIN_SCORE, MIN_AREA_UM2, SMOOTHING_UM)
    layer_name = "mitoses"
    heatmap_name = "mitosis heatmap"
    results_file = "mitoses.geojson"
    item_names = ("mitosis", "mitoses")
    bundled_note = ("The bundled mitosis model is small (CPU) and was trained on 1,169 "
                    "MIDOG 2021 crops of human breast cancer from 3 scanners; see "
                    "docs/mitosis-model.md for its validation F1 and its limits.")

    def geometry(self, shape0: tuple[int, int], slide_mpp: float | None,
                 config: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
        from ..models.io import geometry as model_geometry

        model_geometry(dict(config))  # a config with another patch/stride is refused
        return geometry_for(shape0, slide_mpp, config.get("mpp"))

    def default_roi_cells(self, device: str, options: Mapping[str, Any]) -> int:
        gpu = str(device).startswith(("cuda", "mps"))
        return GPU_ROI_CELLS if gpu else CPU_ROI_CELLS

    def forward(self, net: Any, config: Mapping[str, Any], options: Mapping[str, Any]
                ) -> Forward:
        from ..models.segmitos import TiledForward

        return TiledForward(net)

    def postprocess(self, heatmap: np.ndarray, geometry: Any, values: Mapping[str, Any]
                    ) -> Detections:
        from ..postprocess.blobs import find_mitoses, max_score
        from ..postprocess.mitotic_count import density_per_mm2, hotspot, per_10_hpf

        t = time.perf_counter()
        found = find_mitoses(heatmap, geometry, min_score=float(values["min_score"]),
                             min_area_um2=float(values["min_area_um2"]),
                             smoothing_um=float(values["smoothing_um"]))
        items = found.mitoses
        area_mm2 = analysed_area_mm2(heatmap, geometry)
        xy = np.asarray([(m.x, m.y) for m in items], np.float64).reshape(-1, 2)
        spot = hotspot(xy, geometry.slide_mpp, (geometry.width0, geometry.height0))
        extra = {
            "hotspot": spot,
            "analysed_area_mm2": area_mm2,
            "tissue_area_mm2": area_mm2,
            "count_per_mm2": density_per_mm2(len(items), area_mm2),
            "count_per_10_hpf": per_10_hpf(len(items), area_mm2),
            "otsu_threshold": found.threshold,
            "candidates": found.candidates,
        }
        return Detections("points", items, max_score(items),
                          seconds=time.perf_counter() - t, extra=extra)

    def features(self, detections: Detections) -> list[dict[str, Any]]:
        from ..annotations.points import mitoses_to_features

        return mitoses_to_features(detections.items, detections.extra.get("hotspot"))

    def summary_items(self, detections: Detections) -> dict[str, Any]:
        from ..postprocess.mitotic_count import HPF_MM2

        e = detections.extra
        spot = e.get("hotspot")
        return {
            "mitosis_count": len(detections),
            "mitoses": [m.to_dict() for m in detections.items],
            "analysed_area_mm2": _num(e.get("analysed_area_mm2")),
            "count_per_mm2": _num(e.get("count_per_mm2")),
            "count_per_10_hpf": _num(e.get("count_per_10_hpf")),
            "hpf_mm2": HPF_MM2,
            "hotspot": spot.to_dict() if spot is not None else None,
            "otsu_threshold": _num(e.get("otsu_threshold")),
        }

    def headline(self, detections: Detections) -> str:
        n = len(detections)
        e = detections.extra
        density = e.get("count_per_mm2", math.nan)
        text = f"{n} {self.item_names[n != 1]}"
        if density is not None and math.isfinite(density):
            text += f"   ·   {density:.1f} per mm²"
        spot = e.get("hotspot")
        if spot is not None:
            text += f"   ·   hotspot {spot.count} in {spot.area_mm2:.2f} mm²"
        return text


def analysed_area_mm2(heatmap: np.ndarray, geometry: Any) -> float:
    """Area of the computed map cells (tissue ROIs), clipped to the slide, in mm²."""
    rows, cols = heatmap.shape
    s = geometry.cell_size0
    done = np.isfinite(heatmap)
    # The last row/column of cells may overhang the slide: count only its part inside.
    h = np.minimum(s, geometry.height0 - np.arange(rows) * s)
    w = np.minimum(s, geometry.width0 - np.arange(cols) * s)
    px = float((done * h[:, None] * w[None, :]).sum())
    return px * geometry.slide_mpp ** 2 * 1e-6


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 6)


__all__ = ["MitosisDetector", "analysed_area_mm2", "geometry_for"]
