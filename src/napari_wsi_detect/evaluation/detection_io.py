"""Inputs of the point F1 (`evaluation/detection.py`): detections and truth by case id.

Detections: a run folder of ours (its summary.json names the results file, normally
`mitoses.geojson`, and records the slide and its pixel size), a GeoJSON of Point
detections (score = `measurements.score`), a CSV `x,y,score`, or a folder of those.
Truth: anything `annotations.point_truth.read_point_sets` reads, or a folder of them.
Case id: the file name without format suffixes (MIDOG++ COCO: each image's file name);
for a run folder the slide named in its summary, else the folder name. Matching ignores
case. Pixel size per case: `--mpp` when given, else the run's record, else
`DEFAULT_MPP` (0.25 µm/px, where MIDOG's 7.5 µm is its 30 px), with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..annotations.point_truth import PointSet, case_id_from_path, read_point_sets
from ..errors import AnnotationError, WsiDetectError
from .detection import CaseEval
from .froc import EvaluationError, check_level0_mpp

DEFAULT_MPP = 0.25
RUN_SUMMARY = "summary.json"
RUN_RESULTS = "mitoses.geojson"
_POINT_SUFFIXES = (".geojson", ".geojson.gz", ".json", ".xml", ".csv")


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and (path / RUN_SUMMARY).is_file()


def read_run_points(folder: str | os.PathLike) -> PointSet:
    """Point detections of one run folder, with its slide id and pixel size."""
    from ..detectors.result import read_summary

    folder = Path(folder)
    try:
        summary = read_summary(folder, check=True)
    except WsiDetectError as exc:
        raise EvaluationError(str(exc)) from None
    outputs = [n for n in (summary.get("outputs") or {}) if str(n).endswith(".geojson")]
    results = folder / (outputs[0] if outputs else RUN_RESULTS)
    if not results.is_file():
        raise EvaluationError(f"{folder} is not a point-detection run folder: "
                              f"{results.name} is missing")
    (points,) = read_point_sets(results)
    slide = summary.get("slide") if isinstance(summary.get("slide"), dict) else {}
    case_id = case_id_from_path(slide["path"]) if slide.get("path") else folder.name
    mpp = None
    if slide.get("mpp") is not None and not slide.get("mpp_assumed"):
        try:
            mpp = check_level0_mpp(slide["mpp"])
        except EvaluationError:
            raise EvaluationError(f"{folder / RUN_SUMMARY}: the recorded slide pixel size "
                                  f"{slide['mpp']!r} is not plausible; the summary is "
                                  "damaged") from None
    return replace(points, case_id=case_id, source=folder, mpp=mpp)


def _with_scores(p: PointSet) -> PointSet:
    """Detections need a score each: none in the file -> 1.0 for all (one-point curve);
    some missing -> an error naming the file."""
    if p.scores is None:
        return replace(p, scores=np.ones(len(p)))
    missing = np.isnan(p.scores)
    if missing.any():
        raise EvaluationError(
            f"{p.source.name}: {int(missing.sum())} of {len(p)} detections have no score "
            "(measurements.score / a score column); give every detection a score or none")
    return p


def load_point_detections(paths: Iterable[str | os.PathLike]) -> list[PointSet]:
    out: list[PointSet] = []
    for p in map(Path, paths):
        if is_run_folder(p):
            out.append(read_run_points(p))
        elif p.is_dir():
            children = sorted(p.iterdir())
            runs = [c for c in children if is_run_folder(c)]
            files = [c for c in children if c.is_file()
                     and c.name.lower().endswith(_POINT_SUFFIXES) and c.name != RUN_SUMMARY]
            if not runs and not files:
                raise EvaluationError(f"{p} holds no run folders and no point files "
                                      "(GeoJSON, CSV)")
            out += [read_run_points(r) for r in runs]
            for f in files:
                out += read_point_sets(f)
        elif p.is_file():
            out += read_point_sets(p)
        else:
            raise EvaluationError(f"detections not found: {p}")
    return [_with_scores(s) for s in out]


def load_point_truth(paths: Iterable[str | os.PathLike]) -> list[PointSet]:
    out: list[PointSet] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = [c for c in sorted(p.iterdir()) if c.is_file()
                     and c.name.lower().endswith(_POINT_SUFFIXES) and c.name != RUN_SUMMARY]
            if not files:
                raise AnnotationError(f"{p} holds no point annotation files (GeoJSON, ASAP "
                                      "XML, COCO JSON, CSV)")
            for f in files:
                out += read_point_sets(f)
        elif p.is_file():
            out += read_point_sets(p)
        else:
            raise AnnotationError(f"ground truth not found: {p}")
    return out


@dataclass
class MatchedCases:
    cases: list[CaseEval]
    warnings: list[str] = field(default_factory=list)
    pixel_sizes: dict[str, dict[str, object]] = field(default_factory=dict)
    excluded: int = 0  # truth points of non-mitosis classes left out


def _ids(ids: Iterable[str], limit: int = 20) -> str:
    ids = sorted(set(ids), key=str.lower)
    shown = ", ".join(ids[:limit]) or "none"
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


def match_cases(detections: Sequence[PointSet], truths: Sequence[PointSet],
                mpp: float | None = None, unmatched_are_empty: bool = False
                ) -> MatchedCases:
    """Pair detections with truth by case id (ignoring case). A detection set without
    truth is an error listing both sides' ids (a misspelt name must not drop a case);
    truth without detections is left out with a warning, or with `unmatched_are_empty`
    counted as a case where nothing was detected (its mitoses are false negatives)."""
    if mpp is not None:
        mpp = check_level0_mpp(mpp)
    by_id: dict[str, PointSet] = {}
    for t in truths:
        key = t.case_id.lower()
        if key in by_id:
            raise EvaluationError(f"two ground truths for case {t.case_id}: "
                                  f"{by_id[key].source} and {t.source}")
        by_id[key] = t
    seen: dict[str, PointSet] = {}
    missing, defaulted = [], []
    out = MatchedCases([])
    for d in detections:
        key = d.case_id.lower()
        if key in seen:
            raise EvaluationError(f"two detection sets for case {d.case_id}: "
                                  f"{seen[key].source} and {d.source}")
        seen[key] = d
        truth = by_id.get(key)
        if truth is None:
            missing.append(d.case_id)
            continue
        if mpp is not None:
            value, source = mpp, "--mpp"
            if d.mpp is not None and abs(d.mpp - mpp) > 0.02 * min(d.mpp, mpp):
                out.warnings.append(f"case {d.case_id}: --mpp {mpp:g} overrides the "
                                    f"{d.mpp:g} µm/px its run records")
        elif d.mpp is not None:
            value, source = d.mpp, f"the run {d.source / RUN_SUMMARY}"
        else:
            value, source = DEFAULT_MPP, "default"
            defaulted.append(d.case_id)
        out.pixel_sizes[d.case_id] = {"mpp": value, "source": source}
        dets = np.column_stack([d.scores, d.xy]) if len(d) else np.zeros((0, 3))
        out.cases.append(CaseEval(d.case_id, truth.xy, dets, value))
        out.excluded += truth.excluded
    if missing:
        raise EvaluationError(
            f"no ground truth for case(s) {_ids(missing)}. Detections were read for: "
            f"{_ids(d.case_id for d in detections)}; ground truth for: "
            f"{_ids(t.case_id for t in truths)}. Ids are file names without format "
            "suffixes (or the slide in a run's summary.json), matched ignoring case")
    if defaulted:
        out.warnings.append(
            f"no pixel size recorded for {_ids(defaulted)}: the radius uses {DEFAULT_MPP} "
            "µm/px (7.5 µm = 30 px, MIDOG's); pass --mpp if the images have another")
    left = [t for k, t in by_id.items() if k not in seen]
    if left and unmatched_are_empty:
        for t in left:
            value = mpp if mpp is not None else DEFAULT_MPP
            out.pixel_sizes[t.case_id] = {"mpp": value, "source": "--mpp" if mpp else "default"}
            out.cases.append(CaseEval(t.case_id, t.xy, np.zeros((0, 3)), value))
            out.excluded += t.excluded
        out.warnings.append(f"{len(left)} ground-truth case(s) have no detections: counted "
                            f"as nothing detected ({sum(len(t) for t in left)} false "
                            f"negatives): {_ids([t.case_id for t in left], 10)}")
    elif left:
        out.warnings.append(f"{len(left)} ground-truth case(s) have no detections and are "
                            f"left out: {_ids([t.case_id for t in left], 10)} (pass "
                            "--unmatched-are-empty to count their mitoses as missed)")
    if not out.cases:
        raise EvaluationError("no case has both detections and ground truth")
    return out
