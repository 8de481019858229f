"""Hard negative mining: stage 2 of Fast ScanNet training (METHODS §1 (5)).

After stage 1, the model is run densely (anchor layers, α) over the tissue of the
training slides through the whole-slide engine (same ROI plan, same reader, same
normalisation and map geometry as inference, so a "false positive" here is exactly a
false positive the user would see). Every map cell with tumour probability above the
threshold whose patch centre lies on tissue and outside every tumour outline grown by a
safety margin is a hard negative: its level-0 centre
(`MapGeometry.cell_to_level0`, docs/architecture.md) becomes a candidate of the sampler's
`hard` class, and training continues with those in the mix.

The margin keeps the border of a lesion (where a 244 px patch centred just outside still
sees tumour, and annotations are imprecise) out of the negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .sampler import PatchSampler, SlideCandidates

# A dense predictor: (N, 3, H, W) normalised float32 → (N, H', W') tumour probability at
# output stride 32/α, H' = (H − 244)·α/32 + 1 (what `models.anchor.densify` returns).
DensePredictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class MiningReport:
    """What mining found on each training slide (before capping)."""

    threshold: float
    per_slide: list[dict] = field(default_factory=list)

    @property
    def total_false_positives(self) -> int:
        return int(sum(s["false_positives"] for s in self.per_slide))

    @property
    def fp_per_slide(self) -> float:
        return self.total_false_positives / max(1, len(self.per_slide))

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "per_slide": self.per_slide,
                "false_positives_total": self.total_false_positives,
                "false_positives_per_slide": self.fp_per_slide}


def _on_tissue(tissue: object, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    mask = tissue.mask
    ds = float(tissue.downsample)
    col = np.clip((x / ds).astype(np.int64), 0, mask.shape[1] - 1)
    row = np.clip((y / ds).astype(np.int64), 0, mask.shape[0] - 1)
    return mask[row, col]


def slide_false_positives(slide: object, predictor: DensePredictor, candidates: SlideCandidates,
                          model_mpp: float, threshold: float = 0.5, alpha: int = 2,
                          margin: float = 200.0, normalisation: object = None,
                          device: str | torch.device = "cpu", roi_cells: int | None = None,
                          tissue: object = None, config: dict | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 centres (n, 2) and probabilities (n,) of the map cells of one slide where
    `predictor` says tumour (p > threshold) on normal tissue (outside tumour + `margin`
    level-0 px). The plan and the runner are the detection job's (`prepare_run`,
    `run_tiles`), with the geometry (patch, stride, mpp) from `config`, the model's."""
    from ..detectors import get_detector
    from ..detectors.job import prepare_run, run_tiles
    from ..slide.tissue import compute_tissue_mask

    h0, w0 = slide.levels[0].shape
    if tissue is None:
        tissue = compute_tissue_mask(slide)
    if not np.asarray(tissue.mask).any():
        # The tissue detector found nothing (it happens on some slides); fall back to the
        # cells the sampler trains on, so the slide is still mined where it was trained.
        from ..slide.tissue import TissueMask

        cells = np.zeros(candidates.grid_shape, bool).reshape(-1)
        cells[candidates.normal] = True
        cells[candidates.tumour] = True
        tissue = TissueMask(cells.reshape(candidates.grid_shape), candidates.cell,
                            slide.mpp, (h0, w0))
    config = {"architecture": "scannet-fcn", "patch": 244, "stride": 32,
              **(config or {}), "mpp": model_mpp}
    if normalisation is not None:
        config["normalisation"] = normalisation.to_dict()
    prep = prepare_run(get_detector("metastases"), slide, None, config,
                       options={"alpha": alpha}, device=device, roi_cells=roi_cells,
                       tissue=tissue, forward=predictor)
    geometry = prep.geometry
    xs, ys, ps = [], [], []
    with torch.no_grad():
        for tile in run_tiles(prep, slide, n_readers=1):
            rr, cc = np.nonzero(tile.probs > threshold)
            if rr.size == 0:
                continue
            x, y = geometry.cell_to_level0(tile.r0 + rr, tile.c0 + cc)
            xs.append(np.asarray(x, float))
            ys.append(np.asarray(y, float))
            ps.append(tile.probs[rr, cc].astype(np.float32))
    if not xs:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    p = np.concatenate(ps)
    inside = (x < w0) & (y < h0)
    keep = inside & _on_tissue(tissue, x, y) & ~candidates.truth.near(x, y, margin)
    return np.stack([x[keep], y[keep]], axis=1).astype(np.float32), p[keep]


def mine_hard_negatives(predictor: DensePredictor, sampler: PatchSampler, model_mpp: float,
                        threshold: float = 0.5, alpha: int = 2, margin_um: float = 50.0,
                        max_per_slide: int = 2000, normalisation: object = None,
                        device: str | torch.device = "cpu", roi_cells: int | None = None,
                        progress: Callable[[str], None] | None = None,
                        config: dict | None = None
                        ) -> tuple[dict[int, np.ndarray], MiningReport]:
    """Run `predictor` densely over every training slide; return hard-negative centres
    per slide index (the `max_per_slide` most confident ones) and a report with the
    false-positive count of each slide on its normal tissue."""
    from ..slide import open_slide

    hard: dict[int, np.ndarray] = {}
    report = MiningReport(threshold=threshold)
    for i, cand in enumerate(sampler.slides):
        with open_slide(cand.path) as slide:
            mpp = cand.mpp or model_mpp
            pts, probs = slide_false_positives(
                slide, predictor, cand, model_mpp, threshold=threshold, alpha=alpha,
                margin=margin_um / mpp, normalisation=normalisation, device=device,
                roi_cells=roi_cells, config=config,
            )
        if len(pts) > max_per_slide:
            order = np.argsort(-probs, kind="stable")[:max_per_slide]
            pts = pts[np.sort(order)]
        hard[i] = pts
        report.per_slide.append({
            "slide": cand.path, "false_positives": int(len(probs)),
            "added": int(len(pts)), "tumour_slide": not cand.truth.is_empty,
            "max_prob": float(probs.max()) if len(probs) else None,
        })
        if progress is not None:
            progress(f"hard negatives: {cand.path}: {len(probs)} false positives "
                     f"(p > {threshold}), {len(pts)} added")
    return hard, report
