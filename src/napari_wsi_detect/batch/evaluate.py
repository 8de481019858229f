"""The cohort's evaluation against ground truth (`--truth`), through the evaluation code
`wsi-detect evaluate` uses, chosen by the detector's result kind (never by task name):

* "regions": Camelyon16 lesion FROC + slide AUC (`evaluation/froc_io.py`, `froc.py`,
  `auc.py`), on the run folders of the finished slides;
* "points": F1 by the MIDOG rules (`evaluation/detection.py`, `detection_io.py`), as
  `wsi-detect evaluate f1`;
* "mask": per-slide Dice, mean ± sd and pooled (`evaluation/segmentation.py`,
  `segmentation_io.py`), as `wsi-detect evaluate dice`.

A result kind without an evaluator in `EVALUATORS` is reported as skipped, with why.

The result is a JSON-safe dict stored in report.json ("evaluation") and OUT/evaluation.json;
an evaluation that cannot be done (no truth for a slide, ...) is recorded as an error
there, without failing the cohort: the detections are done either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._atomic import write_json_atomic
from ..errors import WsiDetectError

EVALUATION_JSON = "evaluation.json"
# What each result kind would be scored with (shown when its evaluator is missing).
METRICS = {"regions": "FROC + slide AUC", "points": "F1", "mask": "Dice"}


def froc_auc(folders: Sequence[Path], truth: Sequence[str], unmatched_are_normal: bool
             ) -> dict[str, Any]:
    from ..evaluation.auc import slide_auc
    from ..evaluation.froc import EvaluationError, compute_froc
    from ..evaluation.froc_io import load_detections, load_truth, match_slides

    detections = load_detections(folders)
    matched = match_slides(detections, load_truth(truth), (), unmatched_are_normal)
    froc = compute_froc(matched.slides)
    out: dict[str, Any] = {"metric": METRICS["regions"], "froc": froc.to_dict(),
                           "froc_score": froc.score, "warnings": list(matched.warnings)}
    try:
        roc = slide_auc(matched.slide_scores, matched.slide_labels)
        out["slide_auc"] = roc.auc
        out["roc"] = roc.to_dict()
    except EvaluationError as exc:
        out["slide_auc"] = None
        out["warnings"].append(f"slide AUC undefined: {exc}")
    return out


def point_f1(folders: Sequence[Path], truth: Sequence[str], unmatched_are_normal: bool
             ) -> dict[str, Any]:
    """`unmatched_are_normal` does not apply: a slide without point truth is an error."""
    from ..evaluation.detection import evaluate_f1
    from ..evaluation.detection_io import load_point_detections, load_point_truth, match_cases

    matched = match_cases(load_point_detections(folders), load_point_truth(truth))
    result = evaluate_f1(matched.cases)
    return {"metric": METRICS["points"], "f1": result.f1, "precision": result.precision,
            "recall": result.recall, "tp": result.tp, "fp": result.fp, "fn": result.fn,
            "detail": result.to_dict(), "warnings": list(matched.warnings)}


def mask_dice(folders: Sequence[Path], truth: Sequence[str], unmatched_are_normal: bool
              ) -> dict[str, Any]:
    """`unmatched_are_normal` does not apply: a slide without a truth mask is an error."""
    from ..evaluation.segmentation import summarise_slides
    from ..evaluation.segmentation_io import (
        load_predictions,
        load_truth_masks,
        match,
        score_pair,
    )

    pairs, warnings = match(load_truth_masks(truth), load_predictions(folders))
    slides = []
    for t, p in pairs:
        scores, _, _, w = score_pair(t, p)
        slides.append(scores)
        warnings += w
    result = summarise_slides(slides, warnings)
    return {"metric": METRICS["mask"], "dice": result.dice.mean, "dice_sd": result.dice.sd,
            "pooled_dice": result.pooled_dice, "detail": result.to_dict(),
            "warnings": list(warnings)}


# result kind -> evaluator(folders, truth paths, unmatched_are_normal) -> dict
EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "regions": froc_auc, "points": point_f1, "mask": mask_dice}


def evaluate_cohort(detector: Any, folders: Sequence[Path], truth: Sequence[str],
                    out: Path, unmatched_are_normal: bool = False) -> dict[str, Any]:
    """Evaluate the finished slides' folders; writes OUT/evaluation.json."""
    kind = detector.result_kind
    metric = METRICS.get(kind, kind)
    evaluator = EVALUATORS.get(kind)
    if evaluator is None:
        result: dict[str, Any] = {
            "metric": metric, "skipped": True,
            "note": f"no cohort evaluation for {detector.task!r} ({kind}) results in this "
                    f"version: its {metric} evaluator is not available; evaluate the slide "
                    "folders with `wsi-detect evaluate` once it is"}
    elif not folders:
        result = {"metric": metric, "error": "no slide finished: nothing to evaluate"}
    else:
        try:
            result = evaluator(list(folders), list(truth), unmatched_are_normal)
        except WsiDetectError as exc:
            result = {"metric": metric, "error": str(exc)}
    result["slides"] = len(folders)
    result["truth"] = [str(t) for t in truth]
    write_json_atomic(out / EVALUATION_JSON, result, indent=1)
    return result


def describe(result: dict[str, Any]) -> list[str]:
    """Lines for the terminal."""
    if result.get("skipped"):
        return [f"evaluation skipped: {result['note']}"]
    if result.get("error"):
        return [f"evaluation ({result['metric']}) not done: {result['error']}"]
    lines = [f"warning: {w}" for w in result.get("warnings", [])]
    if "froc_score" in result:
        auc = result.get("slide_auc")
        lines.append(f"FROC score: {result['froc_score']:.4f}; slide AUC: "
                     + (f"{auc:.4f}" if auc is not None else "undefined")
                     + f" ({result['slides']} slides)")
    for key, label in (("f1", "F1"), ("dice", "Dice (mean over slides)")):
        if isinstance(result.get(key), (int, float)):
            lines.append(f"{label}: {result[key]:.4f} ({result['slides']} slides)")
    return lines
