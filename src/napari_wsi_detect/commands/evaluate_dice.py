"""`wsi-detect evaluate dice`: tumour segmentation Dice, precision, recall per slide.

Plugged into `evaluate` by `commands/evaluate.py` (PLUGGABLE_MODES)."""

from __future__ import annotations

import argparse

from .._atomic import write_json_atomic
from .evaluate import _check_output, _mpp_arg

HELP = "tumour segmentation Dice, precision, recall per slide on the truth's level-5 grid"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Per-slide Dice, precision and recall of predicted tumour masks against the truth, "
        "on the truth's level-5 grid (downsample 32; a cell is tumour when its centre lies "
        "in a tumour polygon), then mean ± sample sd over slides. Both empty: Dice 1; "
        "one side empty: Dice 0, the undefined precision or recall left out of its mean. "
        "Predictions and truth are matched by slide id: the file name without format "
        "suffixes, or the slide in a run folder's summary.json.")
    p.add_argument("--truth", nargs="+", required=True, metavar="MASK_OR_GEOJSON",
                   help="level-5 mask TIFFs (<id>.tumour-mask.tif, <id>_Mask.tif), GeoJSON "
                   "(Tumor polygons, holes as inner rings), ASAP XML, or folders of them")
    p.add_argument("--masks", nargs="+", required=True, metavar="RUN_DIR_OR_FILE",
                   help="run folders (summary.json + tumour.geojson), GeoJSON of tumour "
                   "polygons, level-5 mask TIFFs, or folders of them")
    p.add_argument("--mpp", type=_mpp_arg, default=None, metavar="UM_PER_PX",
                   help="level-0 µm/px for the areas in mm², overriding what the runs and "
                   "masks record (the scores do not depend on it)")
    p.add_argument("--plot", metavar="PNG", help="write mask vs truth per slide here "
                   "(TP green, FP orange, FN blue)")
    p.add_argument("--json", metavar="JSON", help="write every figure, per slide, here")


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    from ..evaluation.froc import EvaluationError
    from ..evaluation.segmentation import summarise_slides
    from ..evaluation.segmentation_io import load_predictions, load_truth_masks, match, score_pair

    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot")
    truths = load_truth_masks(args.truth)
    preds = load_predictions(args.masks)
    pairs, warnings = match(truths, preds)
    slides, grids = [], []
    for truth, pred in pairs:
        scores, t, p, w = score_pair(truth, pred, args.mpp)
        slides.append(scores)
        warnings += w
        if args.plot:
            grids.append((t, p))
    result = summarise_slides(slides, warnings)
    for w in warnings:
        print(f"warning: {w}")
    for s in slides:
        area = ""
        if s.truth_mm2 is not None:
            area = f"  (truth {s.truth_mm2:.3f} mm², predicted {s.predicted_mm2:.3f} mm²)"
        empty = f"  [{s.empty} empty]" if s.empty else ""
        print(f"{s.slide_id}: Dice {s.dice:.4f}  precision {_fmt(s.precision)}  "
              f"recall {_fmt(s.recall)}{area}{empty}")
    print(f"slides: {len(slides)}")
    print(f"Dice: {result.dice.text()}")
    print(f"precision: {result.precision.text()}")
    print(f"recall: {result.recall.text()}")
    print(f"pooled Dice (cells summed over slides): {result.pooled_dice:.4f}")
    if args.plot:
        from ..evaluation.segmentation_plot import plot_dice

        try:
            print(f"plot: {plot_dice(result, grids, args.plot)}")
        except OSError as exc:
            raise EvaluationError(f"--plot {args.plot}: cannot write it ({exc})") from exc
    if args.json:
        out = result.to_dict()
        out["level0_mpp"] = args.mpp
        try:
            print(f"json: {write_json_atomic(args.json, out, indent=1)}")
        except OSError as exc:
            raise EvaluationError(f"--json {args.json}: cannot write it ({exc})") from exc
    return 0
