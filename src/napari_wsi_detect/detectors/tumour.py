"""H2G-Net tumour segmentation as a detector (METHODS §3).

Stage 1 (`forward`, streamed by the engine like every detector): the slide is cut into
non-overlapping 256×256 patches at the model's ~1 µm/px; each patch with more than 25 %
tissue gets the MobileNetV2 classifier's tumour probability, the others 0. The map is
one cell per patch (`MapGeometry` with patch = stride = 256, α = 1).

Stage 2 (`finish`, once per complete run after the last tile, never on a slider move):
a low-resolution image of the slide (the coarsest level ≥ `refine_size` px, in [0, 1])
and the stage-1 heatmap, both resized to `refine_size`² (bilinear), go through the
U-Net; its tumour probability is stored beside the heatmap as the extra map
``refined`` (engine/maps.py) on a finer grid (the same geometry with α = k, k a power of
two, so the grid is about `refine_size` cells on the long side), together with a
``tissue`` map (tissue mask of the same low-resolution image) for the tissue fraction.

Post-processing (sliders): threshold the refined map (or, with `refine` = 0, the stage-1
heatmap alone, for comparison), drop components below `min_area_um2`, contours with
holes (postprocess/regions.py). `Detections("mask", regions, max probability,
extra={"mask", "tumour_area_mm2", "tissue_fraction", "geometry"})`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ModelFileError
from .base import Detections, Detector, Forward
from .params import Param

TISSUE_PATCH_FRACTION = 0.25  # the paper's "> 25 % tissue" patch rule
TISSUE_SATURATION = 0.08  # pixel is tissue above this HSV saturation (slide/tissue.py range)
PATCH_CHUNK = 32  # patches per classifier call: bounds memory for large ROIs

THRESHOLD = Param(
    "threshold", "Threshold", 0.5, 0.0, 1.0, step=0.01, decimals=2,
    help="Tumour probability at or above which a pixel of the map is tumour.")
MIN_AREA_UM2 = Param(
    "min_area_um2", "Minimum area", 0.0, 0.0, 1e7, step=1000.0, unit="µm²", decimals=0,
    help="Tumour regions smaller than this area are dropped (0 = keep all).")
REFINE = Param(
    "refine", "Refinement", 1, 0, 1, choices=(0, 1), integer=True,
    help="1: the U-Net refined mask (H2G-Net stage 2); 0: the stage-1 patch heatmap alone "
         "(coarse, one cell per 256 µm patch), to compare the two stages.")


class TumourDetector(Detector):
    task = "tumour"
    title = "Tumour segmentation (H2G-Net)"
    result_kind = "mask"
    architectures = ("h2g-net",)
    default_model = "tumour"
    options = ()
    params = (THRESHOLD, MIN_AREA_UM2, REFINE)
    extra_maps = ("refined", "tissue")
    layer_name = "tumour"
    heatmap_name = "tumour heatmap"
    results_file = "tumour.geojson"
    item_names = ("tumour region", "tumour regions")
    bundled_note = ("The bundled tumour model was trained on synthetic (phantom) slides "
                    "only: its masks on real tissue are not meaningful.")

    # -- model -----------------------------------------------------------------------------
    def check_model(self, config: Mapping[str, Any]) -> None:
        super().check_model(config)
        patch, stride = int(config.get("patch", 256)), int(config.get("stride", 256))
        if patch != stride:
            raise ModelFileError(
                f"{config.get('_json_path') or 'the model'}: an h2g-net model classifies "
                f"non-overlapping patches (patch = stride), the config says patch {patch}, "
                f"stride {stride}")

    # -- running ---------------------------------------------------------------------------
    def geometry(self, shape0: tuple[int, int], slide_mpp: float | None,
                 config: Mapping[str, Any], options: Mapping[str, Any]) -> Any:
        from ..engine.plan import MapGeometry

        patch = int(config.get("patch", 256))
        return MapGeometry.for_slide(tuple(shape0), slide_mpp, config.get("mpp"), alpha=1,
                                     patch=patch, model_stride=patch)

    def default_roi_cells(self, device: str, options: Mapping[str, Any]) -> int:
        # 4×4 patches (1024² model px) per ROI on a CPU: a tile every second or so.
        return 8 if str(device).startswith(("cuda", "mps")) else 4

    def forward(self, net: Any, config: Mapping[str, Any], options: Mapping[str, Any]
                ) -> Forward:
        from ..engine.run import Normalisation

        norm = Normalisation.from_config(dict(config))
        return PatchForward(net, int(config.get("patch", 256)), norm.mean, norm.std)

    def finish(self, store: Any, slide: Any, net: Any, config: Mapping[str, Any],
               options: Mapping[str, Any]) -> None:
        from .tumour_refine import refine_store

        refine_store(store, slide, net, int(config.get("refine_size", 1024)))

    # -- post-processing ---------------------------------------------------------------------
    def postprocess(self, heatmap: np.ndarray, geometry: Any, values: Mapping[str, Any],
                    maps: Mapping[str, Any] | None = None) -> Detections:
        from .tumour_refine import segment

        t = time.perf_counter()
        maps = maps or {}
        refined = maps.get("refined") if int(values["refine"]) == 1 else None
        prob, g = ((refined.values, refined.geometry) if refined is not None
                   else (heatmap, geometry))
        regions, mask = segment(prob, g, float(values["threshold"]),
                                float(values["min_area_um2"]))
        cell_mm2 = (g.cell_size0 * g.slide_mpp / 1000.0) ** 2
        area_mm2 = float(sum(r.area_um2 for r in regions)) / 1e6
        fraction = _tissue_fraction(mask, g, maps.get("tissue"))
        finite = np.isfinite(prob)
        score = float(np.max(prob[finite])) if finite.any() else float("nan")
        return Detections("mask", regions, score, seconds=time.perf_counter() - t, extra={
            "mask": mask, "geometry": g, "tumour_area_mm2": round(area_mm2, 4),
            "tissue_fraction": fraction, "refined": refined is not None,
            "cell_mm2": cell_mm2})

    # -- outputs -------------------------------------------------------------------------------
    def features(self, detections: Detections) -> list[dict[str, Any]]:
        from ..annotations.geojson import regions_to_features

        return regions_to_features(detections.items, name_prefix="Tumour")

    def summary_items(self, detections: Detections) -> dict[str, Any]:
        ex = detections.extra
        return {"region_count": len(detections),
                "tumour_area_mm2": ex.get("tumour_area_mm2"),
                "tumour_fraction_of_tissue": ex.get("tissue_fraction"),
                "refined": ex.get("refined"),
                "regions": [r.to_dict() for r in detections.items]}

    def headline(self, detections: Detections) -> str:
        ex = detections.extra
        frac = ex.get("tissue_fraction")
        share = f" ({100 * frac:.1f} % of tissue)" if frac is not None else ""
        stage = "" if ex.get("refined") else "   ·   stage 1 only"
        return f"Tumour: {ex.get('tumour_area_mm2', 0.0):.2f} mm²{share}{stage}"


def _tissue_fraction(mask: np.ndarray, geometry: Any, tissue: Any) -> float | None:
    """Share of the tissue (the ``tissue`` map) that the mask covers; None without a
    tissue map. Counted on the tissue map's grid, so tumour drawn over glass does not
    count and the share is at most 1."""
    if tissue is None:
        return None
    t = np.nan_to_num(tissue.values, nan=0.0)
    k = tissue.geometry.alpha // geometry.alpha
    if k < 1 or tissue.geometry.alpha % geometry.alpha:
        return None
    fine = np.repeat(np.repeat(mask, k, axis=0), k, axis=1)[:t.shape[0], :t.shape[1]]
    total = float(t.sum())
    return round(float((t * fine).sum()) / total, 4) if total > 0 else None


class PatchForward:
    """The engine's forward for stage 1: (N, 3, n·P, m·P) normalised input → (N, n, m)
    tumour probability of each P×P patch, 0 where the patch has ≤ 25 % tissue."""

    def __init__(self, net: Any, patch: int, mean: tuple[float, ...], std: tuple[float, ...]
                 ) -> None:
        self.net, self.patch = net, int(patch)
        self.mean, self.std = tuple(mean), tuple(std)
        self.core: Any = None  # a backend's copy of the patch network (models/backends.py)

    def core_module(self) -> Any:
        """The network part ((B, 3, P, P) -> logits), for models/backends.py."""
        return self.net.patch_net

    def with_core(self, core: Any) -> PatchForward:
        new = PatchForward(self.net, self.patch, self.mean, self.std)
        new.core = core
        return new

    def __call__(self, x: Any) -> Any:
        import torch

        n, c, h, w = x.shape
        p = self.patch
        r, q = h // p, w // p
        patches = (x[:, :, :r * p, :q * p].reshape(n, c, r, p, q, p)
                   .permute(0, 2, 4, 1, 3, 5).reshape(n * r * q, c, p, p))
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(patches), PATCH_CHUNK):
            chunk = patches[i:i + PATCH_CHUNK].contiguous(memory_format=torch.channels_last)
            rgb = chunk * std + mean
            hi, lo = rgb.amax(1), rgb.amin(1)
            sat = (hi - lo) / hi.clamp_min(1e-6)
            tissue = (sat > TISSUE_SATURATION).float().mean(dim=(1, 2))
            net = self.core if self.core is not None else self.net.patch_net
            prob = torch.softmax(net(chunk).float(), dim=1)[:, 1]
            # A product, not a `where`: a broken (NaN) model stays visible to the job's
            # finiteness check even on glass.
            out.append(prob * (tissue > TISSUE_PATCH_FRACTION).float())
        return torch.cat(out).view(n, r, q)


def refine_factor(geometry: Any, size: int) -> int:
    """k (a power of two, 1 ≤ k ≤ stride/2) with about `size` refined cells on the
    slide's long side."""
    longest = max(geometry.shape)
    k = 2 ** max(0, int(math.floor(math.log2(max(1.0, size / longest)))))
    return int(min(k, max(1, geometry.model_stride // 2)))


def refined_geometry(geometry: Any, size: int) -> Any:
    return replace(geometry, alpha=refine_factor(geometry, size))


__all__ = ["PatchForward", "TumourDetector", "refine_factor", "refined_geometry"]
