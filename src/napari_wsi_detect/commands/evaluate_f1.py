"""`wsi-detect evaluate f1`: point-detection F1 by the MIDOG rules (mitoses).

Plugged into `evaluate` by `commands/evaluate.py` (PLUGGABLE_MODES)."""

from __future__ import annotations

import argparse
import math
from collections import Counter

from .._atomic import write_json_atomic
from .evaluate import _check_output, _mpp_arg

HELP = "mitosis point F1, precision, recall (MIDOG rules: 7.5 µm, greedy one-to-one)"


def _radius_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"must be a radius in (0, 1000] µm, got {text!r}")
    return value


def _threshold_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Point-detection F1 by the MIDOG challenges' rules: a detection within 7.5 µm of a "
        "truth centroid is a true positive; each truth point in turn takes the nearest "
        "unused detection; TP/FP/FN are summed over all cases before F1. Detections and "
        "truth are matched by case id: the file name without format suffixes, an image's "
        "file name in a COCO file, or the slide in a run folder's summary.json.")
    p.add_argument("--detections", nargs="+", required=True, metavar="RUN_DIR_OR_FILE",
                   help="run folders (mitoses.geojson + summary.json), GeoJSON of Point "
                   "detections (measurements.score), CSV x,y,score, or folders of them")
    p.add_argument("--truth", nargs="+", required=True, metavar="FILE_OR_DIR",
                   help="GeoJSON points, ASAP XML (Dot/PointSet), MIDOG++ COCO JSON, CSV "
                   "x,y[,score][,label], or folders of them")
    p.add_argument("--radius-um", type=_radius_arg, default=7.5, metavar="UM",
                   help="matching radius in µm (default 7.5, MIDOG's; 30 px at 0.25 µm/px)")
    p.add_argument("--mpp", type=_mpp_arg, default=None, metavar="UM_PER_PX",
                   help="level-0 µm/px of every case, overriding what the runs record "
                   "(default: recorded, else 0.25)")
    p.add_argument("--threshold", type=_threshold_arg, default=None, metavar="SCORE",
                   help="count only detections with score >= SCORE (default: all given)")
    p.add_argument("--unmatched-are-empty", action="store_true",
                   help="count truth cases without detections as cases where nothing was "
                   "detected (their mitoses are false negatives) instead of leaving them out")
    p.add_argument("--plot", metavar="PNG", help="write the F1/precision/recall vs "
                   "threshold curve here")
    p.add_argument("--json", metavar="JSON", help="write every figure, per case, and the "
                   "curve here")


def _fmt(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    from ..evaluation.detection import evaluate_f1, plot_f1_curve
    from ..evaluation.detection_io import load_point_detections, load_point_truth, match_cases
    from ..evaluation.froc import EvaluationError

    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot")
    matched = match_cases(load_point_detections(args.detections),
                          load_point_truth(args.truth), mpp=args.mpp,
                          unmatched_are_empty=args.unmatched_are_empty)
    for w in matched.warnings:
        print(f"warning: {w}")
    result = evaluate_f1(matched.cases, radius_um=args.radius_um, threshold=args.threshold,
                         curve=bool(args.plot or args.json))
    sizes = Counter(float(v["mpp"]) for v in matched.pixel_sizes.values())  # type: ignore[arg-type]
    print(f"cases: {len(result.cases)}; radius {result.radius_um:g} µm = " + ", ".join(
        f"{result.radius_um / v:.3g} px at {v:g} µm/px ({n} case{'s' if n != 1 else ''})"
        for v, n in sorted(sizes.items())))
    n_truth = result.tp + result.fn
    print(f"truth points: {n_truth}"
          + (f" (+{matched.excluded} non-mitosis points left out)" if matched.excluded else "")
          + f"; detections: {result.tp + result.fp}"
          + (f" with score >= {args.threshold:g}" if args.threshold is not None else ""))
    print(f"TP: {result.tp}  FP: {result.fp}  FN: {result.fn}")
    print(f"precision: {_fmt(result.precision)}  recall: {_fmt(result.recall)}")
    print(f"F1: {_fmt(result.f1)}")
    best = result.best
    if best is not None and len(result.thresholds) > 1:
        print(f"best F1 over thresholds (chosen on this data, optimistic): {best[1]:.4f} "
              f"at score >= {best[0]:.4g}")
    if args.plot:
        try:
            print(f"plot: {plot_f1_curve(result, args.plot)}")
        except OSError as exc:
            raise EvaluationError(f"--plot {args.plot}: cannot write it ({exc})") from exc
    if args.json:
        out = {"f1": result.to_dict(), "pixel_sizes": matched.pixel_sizes,
               "excluded_truth_points": matched.excluded, "warnings": matched.warnings}
        try:
            print(f"json: {write_json_atomic(args.json, out, indent=1)}")
        except OSError as exc:
            raise EvaluationError(f"--json {args.json}: cannot write it ({exc})") from exc
    return 0
