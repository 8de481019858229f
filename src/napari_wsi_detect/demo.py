"""`wsi-detect demo`: the whole product on one phantom slide, end to end.

Makes a phantom lymph-node slide with known metastases (seed outside the training
seeds), runs the bundled metastasis model over it, writes the run outputs, an overview
PNG (thumbnail, heatmap, detected contours, truth outlines) and this slide's FROC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path, write_json_atomic

# Test-set seeds are disjoint from the training seeds used by scripts/train_demo_model.py.
DEMO_SEED = 9001
DEMO_SIZE = (12288, 9216)


@dataclass
class DemoOutcome:
    out_dir: Path
    slide_path: Path
    overview_png: Path
    slide_score: float
    n_regions: int
    froc: dict[str, Any] | None
    seconds: float


def detections_of(regions: list) -> np.ndarray:
    """(prob, x, y) rows, x/y level-0 px at each region's maximum (Camelyon16 CSV form)."""
    return np.array([[r.max_prob, r.peak_x, r.peak_y] for r in regions], dtype=float).reshape(-1, 3)


def froc_of_slide(slide_path: Path, regions: list, mpp: float) -> dict[str, Any] | None:
    """FROC of one phantom slide against its level-5 truth mask (None if it has no lesion)."""
    from .evaluation.froc import SlideEval, compute_froc
    from .evaluation.truth_masks import load_truth_file

    mask = slide_path.with_name(slide_path.stem + ".tumour-mask.tif")
    truth = load_truth_file(mask, level0_mpp=mpp)
    if not truth.is_tumour or truth.n_lesions == 0:
        return None
    ev = SlideEval(
        slide_id=slide_path.stem,
        detections=detections_of(regions),
        is_tumour=True,
        evaluation_mask=truth.evaluation_mask,
        itc_labels=truth.itc_labels,
        mask_offset=truth.mask_offset,
    )
    result = compute_froc([ev])
    out = result.to_dict()
    out.pop("curve", None)
    return out


HEATMAP_CMAP = "inferno"
HEATMAP_CLEAR = 0.1  # below this the overlay is fully transparent: the slide stays readable
HEATMAP_OPAQUE = 0.5  # from the detection threshold up the overlay has its full opacity
HEATMAP_MAX_ALPHA = 0.75


def heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """(rows, cols, 4) float overlay: colour by probability, opacity ramping from 0 at
    HEATMAP_CLEAR to HEATMAP_MAX_ALPHA at HEATMAP_OPAQUE; NaN (not computed) transparent.
    A flat semi-transparent map would tint the whole tissue and hide the histology."""
    import matplotlib

    p = np.asarray(heatmap, dtype=float)
    finite = np.isfinite(p)
    q = np.clip(np.where(finite, p, 0.0), 0.0, 1.0)
    rgba = matplotlib.colormaps[HEATMAP_CMAP](q)
    ramp = np.clip((q - HEATMAP_CLEAR) / (HEATMAP_OPAQUE - HEATMAP_CLEAR), 0.0, 1.0)
    rgba[..., 3] = np.where(finite, ramp * HEATMAP_MAX_ALPHA, 0.0)
    return rgba


def render_overview(slide, heatmap: np.ndarray, geometry, regions: list, truth, path: Path,
                    title: str = "") -> Path:
    """Two panels: thumbnail with truth (green) and detections (by score); the heatmap."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    level = len(slide.levels) - 1
    lh, lw = slide.levels[level].shape
    thumb = slide.read_region(level, 0, 0, lw, lh)
    w0, h0 = slide.dimensions
    extent = (0, w0, h0, 0)
    fig = Figure(figsize=(14, 6.2), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for ax in (ax1, ax2):
        ax.imshow(thumb, extent=extent)
        ax.set_xlim(0, w0)
        ax.set_ylim(h0, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    cell = geometry.cell_size0
    rows, cols = np.asarray(heatmap).shape
    ax2.imshow(heatmap_rgba(heatmap), extent=(0, cols * cell, rows * cell, 0),
               interpolation="nearest")
    sm = ScalarMappable(Normalize(0, 1), HEATMAP_CMAP)
    fig.colorbar(sm, ax=ax2, fraction=0.035, label="tumour probability")
    for tumour in truth.tumours if truth is not None else []:
        poly = np.asarray(tumour.polygon)
        ax1.plot(poly[:, 0], poly[:, 1], "-", color="lime", lw=1.2)
        ax1.annotate(tumour.size_class, poly.max(axis=0), color="lime", fontsize=7)
    cmap = matplotlib.colormaps["autumn_r"]
    for region in regions:
        for outer, holes in region.polygons:
            for ring in [outer, *holes]:
                ax1.plot(ring[:, 0], ring[:, 1], "-", color=cmap(region.max_prob), lw=1.0)
    ax1.set_title("truth (green) and detections (yellow→red by score)", fontsize=10)
    ax2.set_title(f"metastasis heatmap (p < {HEATMAP_CLEAR:g} transparent)", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def run_demo(out_dir: str | Path = "demo-output", seed: int = DEMO_SEED,
             size: tuple[int, int] = DEMO_SIZE, model: str = "demo", alpha: int = 2,
             device: str = "auto", progress: Any = None) -> DemoOutcome:
    from .api import detect_metastases
    from .phantom import load_phantom_truth, write_phantom
    from .slide import open_slide

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide_path = out / f"phantom-{seed}.tif"
    if not slide_path.exists():
        write_phantom(slide_path, seed=seed, size=size)  # atomic: a crash leaves no slide
    truth = load_phantom_truth(slide_path)
    with open_slide(slide_path) as slide:
        result = detect_metastases(slide, model=model, alpha=alpha, device=device,
                                   progress=progress)
        run_dir = out / "run"
        result.write(run_dir)
        froc = froc_of_slide(slide_path, result.regions, slide.mpp or 0.243)
        title = (f"{slide_path.name}: slide score {result.slide_score:.3f}, "
                 f"{len(result.regions)} regions"
                 + (f", FROC {froc['score']:.3f}" if froc else ""))
        png = render_overview(slide, np.asarray(result.heatmap), result.geometry,
                              result.regions, truth, out / "overview.png", title)
    outcome = DemoOutcome(out, slide_path, png, float(result.slide_score), len(result.regions),
                          froc, time.perf_counter() - t0)
    write_json_atomic(out / "demo.json", {
        "slide": str(slide_path), "overview": str(png), "slide_score": outcome.slide_score,
        "n_regions": outcome.n_regions, "froc": froc, "seconds": round(outcome.seconds, 2),
    })
    return outcome
