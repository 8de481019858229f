"""`wsi-detect evaluate MODE ...`: scores against ground truth.

`froc` lives here. Other modes plug in without editing this file: a module
`napari_wsi_detect.commands.evaluate_<mode>` with `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int` is picked up when present
(`evaluate_f1`, `evaluate_dice`).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
from collections import Counter
from pathlib import Path

from .._atomic import write_json_atomic

PLUGGABLE_MODES = ("f1", "dice")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate detections against ground truth")
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    froc = modes.add_parser(
        "froc",
        help="Camelyon16 lesion FROC + slide AUC (official rules)",
        description=(
            "Camelyon16 FROC and slide-level AUC. Detections and truth are matched by "
            "slide id: the file name without format suffixes (Tumor_001.csv, "
            "Tumor_001.xml, Tumor_001_Mask.tif, x.tumour-mask.tif -> Tumor_001 / x), or "
            "for a run folder the slide named in its summary.json, else the folder name."
        ),
    )
    add_froc_arguments(froc)
    froc.set_defaults(func=run_froc)
    for mode in PLUGGABLE_MODES:
        try:
            module = importlib.import_module(f"napari_wsi_detect.commands.evaluate_{mode}")
        except ModuleNotFoundError as exc:
            if exc.name == f"napari_wsi_detect.commands.evaluate_{mode}":
                continue  # not built yet
            raise
        mp = modes.add_parser(mode, help=getattr(module, "HELP", f"evaluate {mode}"))
        module.add_arguments(mp)
        mp.set_defaults(func=module.run)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def add_froc_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detections", nargs="+", required=True, metavar="DIR_OR_CSV",
        help="run folders (regions.geojson), Camelyon CSVs (prob,x,y in level-0 px), or "
        "folders of either",
    )
    p.add_argument(
        "--truth", nargs="+", default=[], metavar="MASK_OR_ANNOTATION",
        help="level-5 mask TIFFs (<id>.tumour-mask.tif, <id>_Mask.tif), Camelyon XML, NCRF "
        "JSON, GeoJSON (Tumor polygons), or folders of them",
    )
    p.add_argument(
        "--normal", nargs="+", default=[], metavar="SLIDE_ID",
        help="ids of normal slides (no tumour), or a text file with one id per line; "
        "commas also separate ids",
    )
    p.add_argument(
        "--unmatched-are-normal", action="store_true",
        help="treat every slide without ground truth as normal (the official script's rule)",
    )
    p.add_argument("--mpp", type=_mpp_arg, default=None, metavar="UM_PER_PX",
                   help="level-0 µm/px for the 75 µm growth and 275 µm ITC rules, "
                   "overriding the pixel size the runs (summary.json) and masks record; "
                   "without it the recorded one is used, else 0.243 (the official script "
                   "fixes 0.243 for every slide: pass --mpp 0.243 to reproduce it)")
    p.add_argument("--plot", metavar="PNG", help="write the FROC (and ROC) curves here")
    p.add_argument("--json", metavar="JSON", help="write every figure and the curves here")


def _mpp_arg(text: str) -> float:
    """argparse type of --mpp: a finite number in [0.01, 20] µm/px."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.01 <= value <= 20.0:
        raise argparse.ArgumentTypeError(
            f"must be a level-0 pixel size in [0.01, 20] µm/px, got {text!r}")
    return value


def _check_output(path_text: str | None, flag: str) -> None:
    """Refuse, before any work, an output path that cannot be written: a folder, under
    a file, or in a folder without write permission. Missing folders are created."""
    from ..evaluation.froc import EvaluationError

    if not path_text:
        return
    path = Path(path_text).expanduser()
    if path.is_dir():
        raise EvaluationError(f"{flag} {path} is a folder; give a file name, e.g. {path}/"
                              + ("froc.json" if flag == "--json" else "froc.png"))
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise EvaluationError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EvaluationError(f"{flag} {path}: no permission to write in {parent}")


def _normal_ids(values: list[str]) -> list[str]:
    ids: list[str] = []
    for v in values:
        if os.path.isfile(v):
            ids += [ln.strip() for ln in Path(v).read_text().splitlines() if ln.strip()]
        else:
            ids += [s for s in v.split(",") if s.strip()]
    return ids


def run_froc(args: argparse.Namespace) -> int:
    from ..evaluation.auc import slide_auc
    from ..evaluation.froc import EvaluationError, compute_froc
    from ..evaluation.froc_io import load_detections, load_truth, match_slides

    _check_output(args.json, "--json")
    _check_output(args.plot, "--plot")
    detections = load_detections(args.detections)
    truths = load_truth(args.truth, level0_mpp=args.mpp)
    matched = match_slides(detections, truths, _normal_ids(args.normal),
                           args.unmatched_are_normal, mpp=args.mpp)
    for w in matched.warnings:
        print(f"warning: {w}")
    froc = compute_froc(matched.slides)
    if matched.pixel_sizes:
        counts = Counter(float(v["mpp"]) for v in matched.pixel_sizes.values())  # type: ignore[arg-type]
        print("level-0 pixel size for the 75 µm / 275 µm rules: " + ", ".join(
            f"{v:g} µm/px ({n} tumour slide{'s' if n != 1 else ''})"
            for v, n in sorted(counts.items())))

    print(f"slides: {froc.n_slides} ({froc.n_tumour_slides} tumour, "
          f"{froc.n_slides - froc.n_tumour_slides} normal)")
    print(f"lesions: {froc.n_lesions} (+{froc.n_itc} ITC ignored); detections: "
          f"{froc.n_detections}, false positives: {froc.n_fp}, lesions hit: {froc.n_tp}")
    for rate, sens in zip(froc.eval_fp_rates, froc.sensitivities, strict=True):
        print(f"sensitivity @ {rate:g} FP/slide: {sens:.4f}")
    print(f"FROC score: {froc.score:.4f}")

    roc = None
    try:
        roc = slide_auc(matched.slide_scores, matched.slide_labels)
        print(f"slide AUC: {roc.auc:.4f} ({roc.n_positive} tumour, {roc.n_negative} normal)")
    except EvaluationError as exc:
        print(f"slide AUC: undefined ({exc})")

    if args.plot:
        from ..evaluation.plots import plot_froc

        try:
            print(f"plot: {plot_froc(froc, args.plot, roc)}")
        except OSError as exc:
            raise EvaluationError(f"--plot {args.plot}: cannot write it ({exc})") from exc
    if args.json:
        out = {
            "froc": froc.to_dict(),
            "slide_auc": roc.to_dict() if roc is not None else None,
            "slide_scores": {
                s.slide_id: {"score": sc, "tumour": lab}
                for s, sc, lab in zip(matched.slides, matched.slide_scores,
                                      matched.slide_labels, strict=True)
            },
            "level0_mpp": args.mpp,  # --mpp as given (null: recorded per slide)
            "pixel_sizes": matched.pixel_sizes,
            "warnings": matched.warnings,
        }
        try:
            path = write_json_atomic(args.json, out, indent=1)
        except OSError as exc:
            raise EvaluationError(f"--json {args.json}: cannot write it ({exc})") from exc
        print(f"json: {path}")
    return 0
