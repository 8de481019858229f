"""`wsi-detect evaluate MODE ...`: scores against ground truth.

`froc` lives here. Other modes plug in without editing this file: a module
`napari_wsi_detect.commands.evaluate_<mode>` with `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int` is picked up when present
(`evaluate_f1`, `evaluate_dice`).
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    p.add_argument("--mpp", type=float, default=0.243,
                   help="level-0 µm/px used for the 75 µm growth and 275 µm ITC rule "
                   "(the official script fixes 0.243)")
    p.add_argument("--plot", metavar="PNG", help="write the FROC (and ROC) curves here")
    p.add_argument("--json", metavar="JSON", help="write every figure and the curves here")


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

    if args.mpp <= 0:
        raise EvaluationError(f"--mpp must be positive, got {args.mpp}")
    detections = load_detections(args.detections)
    truths = load_truth(args.truth, level0_mpp=args.mpp)
    matched = match_slides(detections, truths, _normal_ids(args.normal),
                           args.unmatched_are_normal)
    for w in matched.warnings:
        print(f"warning: {w}")
    froc = compute_froc(matched.slides)

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

        print(f"plot: {plot_froc(froc, args.plot, roc)}")
    if args.json:
        out = {
            "froc": froc.to_dict(),
            "slide_auc": roc.to_dict() if roc is not None else None,
            "slide_scores": {
                s.slide_id: {"score": sc, "tumour": lab}
                for s, sc, lab in zip(matched.slides, matched.slide_scores,
                                      matched.slide_labels, strict=True)
            },
            "level0_mpp": args.mpp,
            "warnings": matched.warnings,
        }
        path = write_json_atomic(args.json, out, indent=1)
        print(f"json: {path}")
    return 0
