"""Figures that move when a metastasis model gets worse: fragmentation and area, beside FROC.

The Camelyon16 FROC counts a lesion as found when any region's peak lies in it, so a
lesion shattered into 200 fragments, or found with half its area, scores as well as a
clean outline. Per slide (`score_slide`) and over a set of slides (`summarise`) this
module adds, all from the model's own regions (its post-processing at its defaults or
the values given) and the truth file of the slide (`truth_masks.load_truth_file`, the
FROC's reader):

* **regions per true lesion**: for every macro/micro lesion (an evaluation-mask label,
  i.e. Camelyon16's lesion after its 75 µm growth, ITC labels left out as the FROC
  does), the number of distinct regions with at least one map cell on it. Mean and max
  over the lesions that at least one region touches (a missed lesion is the FROC's to
  count; it is reported as `lesions_missed`).
* **pixel Dice and area ratio** at **map resolution**: a map cell is predicted tumour
  when it belongs to a region (the regions' polygons follow cell edges, so rasterising
  them at cell centres gives back exactly the post-processed cells) and true tumour when
  the level-5 truth cell (downsample 32, cell-centre rule of the mask) that holds the map
  cell's centre is tumour (the binary truth, not the grown evaluation mask). Dice is
  `segmentation.slide_dice`; area ratio = predicted / true area, pooled over the
  tumour slides (FP regions included: area claimed anywhere counts).
* **false-positive regions**: regions whose peak falls outside every evaluation label
  (the FROC's rule); per slide over all slides and over the normal ones;
* the **highest normal-slide score** (slide score = map maximum) and the slide AUC.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .auc import slide_auc
from .froc import SlideEval, compute_froc, detection_labels, rasterise_polygons
from .segmentation import slide_dice
from .segmentation import summarise as summarise_values


@dataclass
class SlideShift:
    slide_id: str
    is_tumour: bool
    slide_score: float
    n_regions: int
    fp_regions: int
    regions_per_lesion: list[int]  # one entry per macro/micro lesion (0 = missed)
    truth_cells: int
    predicted_cells: int
    tp_cells: int
    cell_mm2: float
    dice: float | None  # None on a normal slide
    detections: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3)))
    truth: Any = field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("detections")
        d.pop("truth")
        d["truth_mm2"] = self.truth_cells * self.cell_mm2
        d["predicted_mm2"] = self.predicted_cells * self.cell_mm2
        return d


def region_cells(regions: list[Any], shape: tuple[int, int], cell0: float) -> np.ndarray:
    """(rows, cols) int32 map, 0 = no region, i = regions[i - 1] (cell-centre rule on
    each region's polygon; level-0 polygons, `cell0` level-0 px per map cell)."""
    out = np.zeros(shape, dtype=np.int32)
    for i, region in enumerate(regions, start=1):
        x0, y0, x1, y1 = region.bbox
        r0, c0 = max(int(y0 // cell0) - 1, 0), max(int(x0 // cell0) - 1, 0)
        r1, c1 = min(int(math.ceil(y1 / cell0)) + 1, shape[0]), min(int(math.ceil(x1 / cell0)) + 1, shape[1])
        if r1 <= r0 or c1 <= c0:
            continue
        win = rasterise_polygons([region.geometry], (r1 - r0, c1 - c0), downsample=cell0,
                                 origin=(r0, c0))
        out[r0:r1, c0:c1][win] = i
    return out


def level5_at_cells(grid: np.ndarray, offset: tuple[int, int], shape: tuple[int, int],
                    cell0: float, downsample: int = 32) -> np.ndarray:
    """Values of a level-5 array (its [0, 0] at level-5 (row, col) `offset`) at the
    centres of a (rows, cols) map of `cell0`-px cells; 0 outside it."""
    rows = (np.floor((np.arange(shape[0]) + 0.5) * cell0 / downsample).astype(np.int64)
            - offset[0])
    cols = (np.floor((np.arange(shape[1]) + 0.5) * cell0 / downsample).astype(np.int64)
            - offset[1])
    ok_r = (rows >= 0) & (rows < grid.shape[0])
    ok_c = (cols >= 0) & (cols < grid.shape[1])
    out = np.zeros(shape, dtype=grid.dtype)
    out[np.ix_(ok_r, ok_c)] = grid[np.ix_(rows[ok_r], cols[ok_c])]
    return out


def score_slide(slide_id: str, regions: list[Any], slide_score: float, geometry: Any,
                truth: Any) -> SlideShift:
    """One slide's figures. `regions`: postprocess.regions.Region list (level-0
    polygons); `geometry`: the map's MapGeometry; `truth`: truth_masks.SlideTruth at
    the slide's level-0 pixel size."""
    shape, cell0 = tuple(geometry.shape), float(geometry.cell_size0)
    cell_mm2 = (cell0 * geometry.slide_mpp) ** 2 / 1e6
    det = np.array([[r.max_prob, r.peak_x, r.peak_y] for r in regions], float).reshape(-1, 3)
    pred = region_cells(regions, shape, cell0)
    if not truth.is_tumour:
        n_pred = int(np.count_nonzero(pred))
        return SlideShift(slide_id, False, float(slide_score), len(regions), len(regions), [],
                          0, n_pred, 0, cell_mm2, None, det, truth)
    ev = truth.evaluation_mask
    labels = detection_labels(det, ev, 32, truth.mask_offset)
    ev_cells = level5_at_cells(ev, truth.mask_offset, shape, cell0)
    per_lesion = []
    itc = set(truth.itc_labels)
    for k in range(1, int(ev.max()) + 1):
        if k in itc:
            continue
        hit = pred[(ev_cells == k) & (pred > 0)]
        per_lesion.append(int(np.unique(hit).size))
    true_cells = level5_at_cells(truth.tumour, truth.tumour_offset, shape, cell0) > 0
    d = slide_dice(true_cells, pred > 0, slide_id, cell_mm2)
    return SlideShift(slide_id, True, float(slide_score), len(regions),
                      int(np.count_nonzero(labels == 0)), per_lesion, d.tp + d.fn,
                      d.tp + d.fp, d.tp, cell_mm2, d.dice, det, truth)


def summarise_condition(slides: list[SlideShift]) -> dict[str, Any]:
    """The figures of one condition over its slides (see the module docstring)."""
    evals = []
    for s in slides:
        t = s.truth
        if s.is_tumour:
            evals.append(SlideEval(s.slide_id, s.detections, True, t.evaluation_mask,
                                   t.itc_labels, mask_offset=t.mask_offset))
        else:
            evals.append(SlideEval(s.slide_id, s.detections, is_tumour=False))
    froc = compute_froc(evals)
    tumour = [s for s in slides if s.is_tumour]
    normal = [s for s in slides if not s.is_tumour]
    auc = (slide_auc([s.slide_score for s in slides], [s.is_tumour for s in slides]).auc
           if tumour and normal else None)
    per_lesion = [n for s in tumour for n in s.regions_per_lesion]
    found = [n for n in per_lesion if n > 0]
    truth_mm2 = sum(s.truth_cells * s.cell_mm2 for s in tumour)
    pred_mm2 = sum(s.predicted_cells * s.cell_mm2 for s in tumour)
    tp = sum(s.tp_cells for s in tumour)
    fp_fn = sum(s.predicted_cells + s.truth_cells - 2 * s.tp_cells for s in tumour)
    dice = summarise_values([s.dice for s in tumour])
    return {
        "froc": froc.score,
        "slide_auc": auc,
        "fp_regions_per_slide": sum(s.fp_regions for s in slides) / len(slides),
        "fp_regions_per_normal_slide": (sum(s.fp_regions for s in normal) / len(normal)
                                        if normal else None),
        "regions_per_lesion_mean": float(np.mean(found)) if found else None,
        "regions_per_lesion_max": int(max(found)) if found else None,
        "lesions": len(per_lesion),
        "lesions_missed": len(per_lesion) - len(found),
        "dice_mean": dice.mean, "dice_sd": dice.sd,
        "dice_pooled": (2 * tp / (2 * tp + fp_fn)) if (tp or fp_fn) else None,
        "area_ratio": pred_mm2 / truth_mm2 if truth_mm2 else None,
        "truth_mm2": truth_mm2, "predicted_mm2": pred_mm2,
        "highest_normal_score": max((s.slide_score for s in normal), default=None),
        "lowest_tumour_score": min((s.slide_score for s in tumour), default=None),
        "n_slides": len(slides), "n_normal": len(normal),
        "slides": [s.to_dict() for s in slides],
    }

