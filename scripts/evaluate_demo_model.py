"""Evaluate the bundled demo metastasis model on a held-out phantom test set, reproducibly.

    .venv/bin/python scripts/evaluate_demo_model.py \
        --stage1-model /tmp/demo-eval/stage1/model.safetensors \
        --out /tmp/wsi-detect-demo-eval/evaluation.json

Test phantoms (default seeds 500-509: 500-505 with metastases, 506-509 normal) are
disjoint from the training (100-107), validation (108-109) and demo (9001) seeds. They are
written once into the work folder (cached, with their truth) and each model variant runs
through the public API, `napari_wsi_detect.api.detect_metastases(..., device="cpu")`,
into its own run folder (heatmap.zarr, regions.geojson, summary.json; a finished run
with the same model and α is reused, so a second invocation only re-scores).

Scores (napari_wsi_detect.evaluation): Camelyon16 FROC against each slide's
`<stem>.tumour-mask.tif` (normal slides: every detection is a false positive), slide AUC
from the slide scores (map maximum), and per phantom lesion: its size class (macro /
micro / ITC by the phantom truth), the evaluation-mask label it belongs to, whether a
region's peak (the FROC detection point, regions at threshold 0.5) falls in that label,
the best such region's probability, and the heatmap maximum over the lesion. False
positive regions are listed with their distance to the nearest lesion and to the nearest
imposter figure (the phantom's built-in hard negatives).

Variants: the final model at every `--alphas` value and, with `--stage1-model`, the
stage-1 (before hard negative mining) model at α = 2. Output: one JSON with every figure,
`--plot` (the final model at α = 2, `evaluation.plots.plot_froc`, with the slide ROC) and
`--compare-plot` (every variant's FROC curve), and an overview PNG per slide and variant
in the run folders.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_wsi_detect.phantom.seeds import parse_seeds

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SEEDS = list(range(500, 510))
DEFAULT_NORMAL = [506, 507, 508, 509]
# 16384 x 12288 (4 x 3 mm) is about the smallest size at which most test seeds hold a
# macro-metastasis (> 2 mm) beside micro-metastases (docs/metastasis-model.md).
DEFAULT_SIZE = (16384, 12288)
DEFAULT_LESIONS = (1, 2, 2)  # macro, micro, ITC per tumour slide (what fits is kept)
SIZE_CLASSES = ("macro", "micro", "itc")


@dataclass
class Variant:
    name: str
    model: str
    alpha: int
    description: str


@dataclass
class SlideRun:
    slide: Path
    seed: int
    is_tumour: bool
    slide_score: float
    detections: np.ndarray  # (N, 3) prob, peak x, peak y
    regions: list[dict[str, Any]]
    seconds: float
    timings: dict[str, Any]
    lesions: list[dict[str, Any]] = field(default_factory=list)
    false_positives: list[dict[str, Any]] = field(default_factory=list)
    heatmap: np.ndarray | None = field(default=None, repr=False)  # for re-post-processing
    geometry: Any = field(default=None, repr=False)


# --- test set -------------------------------------------------------------------------


def write_test_phantoms(work: Path, seeds: list[int], normal: set[int],
                        size: tuple[int, int], lesions: tuple[int, int, int]
                        ) -> list[tuple[int, Path]]:
    """The test slides, written once (a slide on disk always has its truth beside it)."""
    from napari_wsi_detect.phantom import write_phantom

    tag = f"{size[0]}x{size[1]}-l{'-'.join(map(str, lesions))}"
    folder = work / f"slides-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in seeds:
        tumour = seed not in normal
        path = folder / f"{'tumor' if tumour else 'normal'}_{seed:03d}.tif"
        if not path.exists():
            t = time.perf_counter()
            counts = dict(zip(SIZE_CLASSES, lesions, strict=True)) if tumour else None
            truth = write_phantom(path, seed=seed, size=size, tumour=tumour, lesions=counts)
            print(f"  wrote {path.name} in {time.perf_counter() - t:.0f} s: {truth.counts()}"
                  + (f"; {'; '.join(truth.notes)}" if truth.notes else ""), flush=True)
        out.append((seed, path))
    return out


# --- one slide ------------------------------------------------------------------------


def run_slide(variant: Variant, seed: int, slide_path: Path, run_dir: Path,
              overview: bool) -> SlideRun:
    from napari_wsi_detect.api import detect_metastases
    from napari_wsi_detect.demo import detections_of, render_overview
    from napari_wsi_detect.errors import WsiDetectError
    from napari_wsi_detect.phantom import load_phantom_truth
    from napari_wsi_detect.slide import open_slide

    truth = load_phantom_truth(slide_path)
    t = time.perf_counter()
    with open_slide(slide_path) as slide:
        try:  # a finished run of the same model and alpha is reused as is
            res = detect_metastases(slide, model=variant.model, alpha=variant.alpha,
                                    device="cpu", out=run_dir)
        except WsiDetectError as exc:
            if "overwrite" not in str(exc).lower():
                raise
            res = detect_metastases(slide, model=variant.model, alpha=variant.alpha,
                                    device="cpu", out=run_dir, overwrite=True)
        seconds = time.perf_counter() - t
        heatmap = np.asarray(res.heatmap)
        if overview:
            render_overview(slide, heatmap, res.geometry, res.regions, truth,
                            run_dir / "overview.png",
                            f"{variant.name}: {slide_path.name}, slide score "
                            f"{res.slide_score:.3f}, {len(res.regions)} regions")
    run = SlideRun(slide_path, seed, bool(truth.tumours), float(res.slide_score),
                   detections_of(res.regions), [r.to_dict() for r in res.regions],
                   round(seconds, 2), dict(res.timings), heatmap=heatmap,
                   geometry=res.geometry)
    describe_lesions_and_fps(run, truth, heatmap, res.geometry)
    return run


def sweep_postprocessing(runs: list[SlideRun], openings_um: list[float],
                         min_areas_um2: list[float], thresholds: list[float] | None = None
                         ) -> list[dict[str, Any]]:
    """FROC and detection rates when only the post-processing changes (same heatmaps).
    On the test set this is a diagnostic (not a fair headline figure); on validation
    seeds it is how the model's default thresholds are chosen."""
    from dataclasses import replace

    from napari_wsi_detect.demo import detections_of
    from napari_wsi_detect.phantom import load_phantom_truth
    from napari_wsi_detect.postprocess.regions import extract_regions

    out = []
    for threshold in thresholds or [0.5]:
        for opening in openings_um:
            for min_area in min_areas_um2:
                new = []
                for run in runs:
                    regions = extract_regions(run.heatmap, run.geometry, threshold=threshold,
                                              opening_um=opening, min_area_um2=min_area)
                    r = replace(run, detections=detections_of(regions),
                                regions=[x.to_dict() for x in regions], lesions=[],
                                false_positives=[])
                    describe_lesions_and_fps(r, load_phantom_truth(run.slide), run.heatmap,
                                             run.geometry)
                    new.append(r)
                froc, _, figures = score_variant(new)
                rate = figures["detection_rate"]
                out.append({"threshold": threshold, "opening_um": opening,
                            "min_area_um2": min_area, "froc": froc.score,
                            "sensitivity_at_fp_per_slide":
                                figures["sensitivity_at_fp_per_slide"],
                            "fp_regions_per_slide": figures["regions_at_0_5"]["fp_per_slide"],
                            "detected": {k: f"{v['detected']}/{v['n']}"
                                         for k, v in rate.items()}})
                print(f"  post-processing p ≥ {threshold:g}, opening {opening:g} µm, min area "
                      f"{min_area:g} µm²: FROC {froc.score:.4f}, "
                      f"{out[-1]['fp_regions_per_slide']:.1f} FP regions/slide, "
                      f"detected {out[-1]['detected']}", flush=True)
    return out


def describe_lesions_and_fps(run: SlideRun, truth: Any, heatmap: np.ndarray,
                             geometry: Any) -> None:
    """Per phantom lesion: evaluation label, detected or not, scores; per FP: where."""
    from napari_wsi_detect.evaluation.froc import detection_labels
    from napari_wsi_detect.evaluation.froc_io import load_truth_file

    raw = truth.read_mask()  # level 5, phantom lesion labels
    ev = load_truth_file(truth.mask_path, level0_mpp=truth.mpp)
    ds = truth.mask_downsample
    det = run.detections
    if ev.evaluation_mask is not None:
        det_labels = detection_labels(det, ev.evaluation_mask, ds, ev.mask_offset)
    else:
        det_labels = np.zeros(len(det), dtype=np.int64)

    # Heatmap cell (r, c) -> phantom lesion under its centre (mask pixel at downsample ds).
    cs = geometry.cell_size0
    rows, cols = heatmap.shape
    mr = np.minimum(((np.arange(rows) + 0.5) * cs // ds).astype(int), raw.shape[0] - 1)
    mc = np.minimum(((np.arange(cols) + 0.5) * cs // ds).astype(int), raw.shape[1] - 1)
    cell_lesion = raw[mr[:, None], mc[None, :]]
    hm = np.nan_to_num(heatmap, nan=0.0)

    for t in truth.tumours:
        rr, cc = np.nonzero(raw == t.label)
        eval_label, is_itc = 0, False
        if ev.evaluation_mask is not None and len(rr):
            r0, c0 = ev.mask_offset
            ok = ((rr - r0 >= 0) & (rr - r0 < ev.evaluation_mask.shape[0])
                  & (cc - c0 >= 0) & (cc - c0 < ev.evaluation_mask.shape[1]))
            vals = ev.evaluation_mask[rr[ok] - r0, cc[ok] - c0]
            vals = vals[vals > 0]
            if len(vals):
                eval_label = int(np.bincount(vals).argmax())
                is_itc = eval_label in set(ev.itc_labels)
        hits = det[det_labels == eval_label] if eval_label else np.zeros((0, 3))
        inside = hm[cell_lesion == t.label]
        run.lesions.append({
            "seed": run.seed, "lesion": t.label, "size_class": t.size_class,
            "major_axis_um": round(float(t.major_axis_um), 1),
            "area_um2": round(float(t.area_um2), 1),
            "evaluation_label": eval_label, "evaluation_itc": is_itc,
            "detected": bool(len(hits)),
            "froc_score": float(hits[:, 0].max()) if len(hits) else 0.0,
            "heatmap_max": float(inside.max()) if inside.size else None,
            "heatmap_mean": float(inside.mean()) if inside.size else None,
            "fraction_cells_over_0_5": float((inside > 0.5).mean()) if inside.size else None,
            "n_cells": int(inside.size),
        })

    polys = [np.asarray(t.polygon) for t in truth.tumours]
    imposters = np.asarray(truth.imposters).reshape(-1, 2)
    for (p, x, y), label, region in zip(det, det_labels, run.regions, strict=True):
        if label != 0:
            continue
        d_lesion = min((float(np.hypot(*(poly - (x, y)).T).min()) for poly in polys),
                       default=None)
        d_imp = float(np.hypot(*(imposters - (x, y)).T).min()) if len(imposters) else None
        run.false_positives.append({
            "seed": run.seed, "prob": float(p), "x": float(x), "y": float(y),
            "area_um2": float(region["area_um2"]),
            "distance_to_lesion_um": None if d_lesion is None else round(d_lesion * truth.mpp, 1),
            "distance_to_imposter_um": None if d_imp is None else round(d_imp * truth.mpp, 1),
        })


# --- scoring --------------------------------------------------------------------------


def score_variant(runs: list[SlideRun]) -> tuple[Any, Any, dict[str, Any]]:
    from napari_wsi_detect.evaluation.auc import slide_auc
    from napari_wsi_detect.evaluation.froc import SlideEval, compute_froc
    from napari_wsi_detect.evaluation.froc_io import load_truth_file

    evals = []
    for run in runs:
        mask = run.slide.with_name(run.slide.stem + ".tumour-mask.tif")
        truth = load_truth_file(mask)
        if truth.is_tumour:
            evals.append(SlideEval(run.slide.stem, run.detections, True, truth.evaluation_mask,
                                   truth.itc_labels, mask_offset=truth.mask_offset))
        else:
            evals.append(SlideEval(run.slide.stem, run.detections, is_tumour=False))
    froc = compute_froc(evals)
    roc = slide_auc([r.slide_score for r in runs], [r.is_tumour for r in runs])

    lesions = [les for r in runs for les in r.lesions]
    by_class = {}
    for cls in SIZE_CLASSES:
        sel = [les for les in lesions if les["size_class"] == cls]
        by_class[cls] = {
            "n": len(sel), "detected": sum(les["detected"] for les in sel),
            "rate": (sum(les["detected"] for les in sel) / len(sel)) if sel else None,
            "heatmap_max_median": (float(np.median([les["heatmap_max"] for les in sel]))
                                   if sel else None),
        }
    fps = [fp for r in runs for fp in r.false_positives]
    normal = [r for r in runs if not r.is_tumour]
    tumour = [r for r in runs if r.is_tumour]
    d_imp = [fp["distance_to_imposter_um"] for fp in fps
             if fp["distance_to_imposter_um"] is not None]
    figures = {
        "froc": froc.score,
        "sensitivity_at_fp_per_slide": {str(k): float(v) for k, v in
                                        zip(froc.eval_fp_rates, froc.sensitivities,
                                            strict=True)},
        "slide_auc": roc.auc,
        "n_slides": froc.n_slides, "n_lesions": froc.n_lesions, "n_itc": froc.n_itc,
        "detection_rate": by_class,
        "regions_at_0_5": {
            "fp_per_slide": len(fps) / len(runs),
            "fp_per_normal_slide": (sum(len(r.false_positives) for r in normal) / len(normal)
                                    if normal else None),
            "fp_per_tumour_slide": (sum(len(r.false_positives) for r in tumour) / len(tumour)
                                    if tumour else None),
            "fp_prob_median": float(np.median([fp["prob"] for fp in fps])) if fps else None,
            "fp_within_50um_of_imposter": (sum(d < 50 for d in d_imp) / len(d_imp)
                                           if d_imp else None),
        },
        # How far the ranking is from breaking: the weakest non-ITC lesion against the
        # strongest false positive, in probability and in logit (p saturates near 1).
        "margin": _margin([les["froc_score"] for les in lesions if not les["evaluation_itc"]],
                          [fp["prob"] for fp in fps],
                          [r.slide_score for r in tumour], [r.slide_score for r in normal]),
        "slide_scores": {r.slide.stem: r.slide_score for r in runs},
        "seconds": {"total": round(sum(r.seconds for r in runs), 1),
                    "per_slide_mean": round(float(np.mean([r.seconds for r in runs])), 1)},
    }
    return froc, roc, figures


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-7), 1 - 1e-7)  # float32 softmax saturates at 1 - 6e-8
    return float(np.log(p / (1 - p)))


def _margin(lesion_scores: list[float], fp_scores: list[float], tumour_slides: list[float],
            normal_slides: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if lesion_scores and fp_scores:
        lo, hi = min(lesion_scores), max(fp_scores)
        out.update({"weakest_lesion": lo, "strongest_fp": hi,
                    "logit_gap": round(_logit(lo) - _logit(hi), 2),
                    "lesions_at_1.0": sum(x >= 1.0 for x in lesion_scores),
                    "n_lesions": len(lesion_scores)})
    if tumour_slides and normal_slides:
        lo, hi = min(tumour_slides), max(normal_slides)
        out.update({"lowest_tumour_slide": lo, "highest_normal_slide": hi,
                    "slide_logit_gap": round(_logit(lo) - _logit(hi), 2)})
    return out


def plot_comparison(results: dict[str, tuple[Any, Any, dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=110)
    ax, ax2 = fig.subplots(1, 2)
    for name, (froc, roc, _) in results.items():
        line, = ax.plot(froc.fp_per_slide[::-1], froc.sensitivity[::-1], "-",
                        label=f"{name}: FROC {froc.score:.3f}")
        ax.plot(froc.eval_fp_rates, froc.sensitivities, "o", color=line.get_color(), ms=4)
        ax2.plot(roc.fpr, roc.tpr, "-", color=line.get_color(),
                 label=f"{name}: AUC {roc.auc:.3f}")
    ax.set_xscale("symlog", linthresh=0.25)
    ax.set_xlim(0, 9)
    ax.set_xticks([0, 0.25, 0.5, 1, 2, 4, 8])
    ax.set_xticklabels(["0", "¼", "½", "1", "2", "4", "8"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per slide")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title("FROC, phantom test set (seeds disjoint from training)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax2.plot([0, 1], [0, 1], ":", color="grey")
    ax2.set_xlabel("false-positive rate (normal slides)")
    ax2.set_ylabel("true-positive rate (tumour slides)")
    ax2.set_title("slide ROC (slide score = map maximum)", fontsize=10)
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="final model (default: bundled demo)")
    ap.add_argument("--stage1-model", default=None,
                    help="the stage-1 model (before hard negative mining), evaluated at α = 2")
    ap.add_argument("--baseline-model", default=None,
                    help="another model (e.g. the previously shipped one), evaluated at α = 2 "
                         "with its own default thresholds, for a before/after comparison")
    ap.add_argument("--seeds", nargs="+", default=["500-509"], help="e.g. 500-509 or 500,503")
    ap.add_argument("--normal-seeds", nargs="+", default=["506-509"],
                    help="seeds written as normal nodes (no metastases)")
    ap.add_argument("--size", type=int, nargs=2, default=DEFAULT_SIZE, metavar=("W", "H"))
    ap.add_argument("--lesions", type=int, nargs=3, default=DEFAULT_LESIONS,
                    metavar=("MACRO", "MICRO", "ITC"),
                    help="requested lesions per tumour slide (those that do not fit are "
                         "skipped and noted)")
    ap.add_argument("--alphas", type=int, nargs="+", default=[2, 1],
                    help="dense coefficients for the final model")
    ap.add_argument("--work", default="/tmp/wsi-detect-demo-eval",
                    help="phantom cache and run folders")
    ap.add_argument("--out", default=None, help="JSON of all figures (default WORK/evaluation.json)")
    ap.add_argument("--plot", default=str(REPO / "docs" / "images" / "froc-demo.png"),
                    help="FROC + ROC of the final model at α = 2 (plot_froc)")
    ap.add_argument("--compare-plot",
                    default=str(REPO / "docs" / "images" / "froc-demo-variants.png"))
    ap.add_argument("--no-overview", action="store_true", help="skip the per-slide PNGs")
    ap.add_argument("--sweep-opening-um", type=float, nargs="*", default=[8, 16, 32],
                    help="diagnostic: re-post-process the final α=2 heatmaps with these "
                         "opening radii (µm)")
    ap.add_argument("--sweep-min-area-um2", type=float, nargs="*", default=[0, 20000],
                    help="diagnostic: ... and these minimum region areas (µm²)")
    ap.add_argument("--sweep-threshold", type=float, nargs="*", default=[0.5],
                    help="... and these probability thresholds")
    args = ap.parse_args(argv)

    from napari_wsi_detect.evaluation.plots import plot_froc
    from napari_wsi_detect.models.io import load_model

    t0 = time.perf_counter()
    seeds = parse_seeds(args.seeds)
    normal = set(parse_seeds(args.normal_seeds))
    work = Path(args.work)
    size = (int(args.size[0]), int(args.size[1]))
    if len(set(seeds) & set(range(100, 110)) | (set(seeds) & {9001})):
        print("warning: test seeds overlap the training/validation/demo seeds", file=sys.stderr)
    print(f"test set: seeds {seeds} ({len(normal & set(seeds))} normal), {size[0]}x{size[1]}",
          flush=True)
    slides = write_test_phantoms(work, seeds, normal, size, tuple(args.lesions))
    t_data = time.perf_counter() - t0

    variants = [Variant(f"final α={a}", args.model, a, "after hard negative mining")
                for a in args.alphas]
    if args.stage1_model:
        variants.append(Variant("stage 1 α=2", args.stage1_model, 2,
                                "before hard negative mining"))
    if args.baseline_model:
        variants.append(Variant("baseline α=2", args.baseline_model, 2,
                                "the model compared against (--baseline-model)"))
    results: dict[str, tuple[Any, Any, dict]] = {}
    report: dict[str, Any] = {"variants": {}}
    for v in variants:
        _, cfg = load_model(v.model, "cpu")
        tag = f"{Path(str(cfg.get('_json_path', v.model))).stem}-{str(cfg.get('weights_sha256', ''))[:8]}-a{v.alpha}"
        print(f"{v.name}: {v.model} ({tag})", flush=True)
        runs = []
        for seed, path in slides:
            run = run_slide(v, seed, path, work / "runs" / tag / path.stem,
                            overview=not args.no_overview)
            print(f"  {path.stem}: score {run.slide_score:.3f}, {len(run.regions)} regions, "
                  f"{sum(les['detected'] for les in run.lesions)}/{len(run.lesions)} lesions "
                  f"hit, {len(run.false_positives)} FP, {run.seconds:.0f} s", flush=True)
            runs.append(run)
        froc, roc, figures = score_variant(runs)
        results[v.name] = (froc, roc, figures)
        rate = figures["detection_rate"]
        print(f"  FROC {froc.score:.4f}, slide AUC {roc.auc:.4f}, detected macro "
              f"{rate['macro']['detected']}/{rate['macro']['n']}, micro "
              f"{rate['micro']['detected']}/{rate['micro']['n']}, ITC "
              f"{rate['itc']['detected']}/{rate['itc']['n']}, "
              f"{figures['regions_at_0_5']['fp_per_slide']:.2f} FP regions/slide; "
              f"margin {figures['margin']}", flush=True)
        froc_dict = froc.to_dict()
        sweep = (sweep_postprocessing(runs, args.sweep_opening_um, args.sweep_min_area_um2,
                                      args.sweep_threshold)
                 if v.name in ("final α=2", "baseline α=2") and args.sweep_opening_um
                 else None)
        report["variants"][v.name] = {
            "model": str(v.model), "weights_sha256": cfg.get("weights_sha256"),
            "alpha": v.alpha, "description": v.description, "run_folders": str(work / "runs" / tag),
            **figures, "froc_detail": froc_dict, "roc": roc.to_dict(),
            "lesions": [les for r in runs for les in r.lesions],
            "false_positives": [fp for r in runs for fp in r.false_positives],
            "timings": {r.slide.stem: r.timings for r in runs},
            "postprocessing_sweep": sweep,
        }

    main_name = next((n for n in results if n.startswith("final") and n.endswith("=2")),
                     next(iter(results)))
    froc, roc, _ = results[main_name]
    if args.plot:
        plot_froc(froc, args.plot, roc, title=f"demo model ({main_name}), phantom test set")
    if args.compare_plot and len(results) > 1:
        plot_comparison(results, Path(args.compare_plot))
    report.update({
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "test_set": {"seeds": seeds, "normal_seeds": sorted(normal & set(seeds)),
                     "size": list(size), "mpp": 0.243, "lesions_requested": list(args.lesions),
                     "slides": [str(p) for _, p in slides]},
        "seconds": {"phantoms": round(t_data, 1), "total": round(time.perf_counter() - t0, 1)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    out = Path(args.out) if args.out else work / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from napari_wsi_detect._atomic import write_json_atomic

    write_json_atomic(out, report)
    print(f"wrote {out}" + (f", {args.plot}" if args.plot else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
