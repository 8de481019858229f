"""A cohort: which slides, where each one's outputs go, and which are already finished.

* Arguments are slide files or folders; a folder contributes its slide files (vendor
  suffixes and TIFF, one level deep, hidden files and ground-truth masks such as
  `x.tumour-mask.tif` / `x_Mask.tif` left out). A named path that does not exist is an
  error before any work (a typo should not cost a cohort run).
* Slide `x.svs` writes into `OUT/x/`; two slides with one name (`a/x.svs`, `b/x.svs`)
  get `x-<8 hex of the path's sha1>`, the same on every rerun whatever the order.
* `finished(...)`: the slide's folder holds a complete, self-consistent run
  (`read_summary(check=True)`) of the same slide, task and settings, and its
  `heatmap.zarr` was made with the fingerprint this request would produce (the
  detector's options, weights sha256, architecture, width, normalisation): skipped
  without loading a model. Anything else (absent, partial, other settings) is run, and
  the job resumes a matching partial heatmap.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import WsiDetectError

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide",
                  ".tif", ".tiff", ".ptif", ".ptiff")


class CohortError(WsiDetectError):
    """The cohort cannot start: no slides, a missing path, an unusable output folder."""


def find_slides(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute slide paths, in the order given (a folder's slides sorted by name),
    each once."""
    from ..evaluation.truth_masks import is_mask_file

    found: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir() and not p.name.lower().endswith(".mrxs"):
            children = sorted(c for c in p.iterdir()
                              if c.is_file() and not c.name.startswith(".")
                              and c.name.lower().endswith(SLIDE_SUFFIXES)
                              and not is_mask_file(c))
            if not children:
                raise CohortError(
                    f"{p} holds no slide files ({', '.join(SLIDE_SUFFIXES)}); give slide "
                    "files or folders of them")
            found += children
        elif p.exists():
            found.append(p)
        else:
            raise CohortError(f"slide not found: {p} (check the path and that the drive is "
                              "mounted on this machine and on the workers)")
    seen: set[Path] = set()
    out = []
    for f in found:
        f = f.resolve()
        if f not in seen:
            seen.add(f)
            out.append(f)
    if not out:
        raise CohortError("no slides given")
    return out


def slide_names(slides: list[Path]) -> list[str]:
    """Output folder name of each slide: its id, disambiguated when two share it."""
    from ..evaluation.truth_masks import slide_id_from_path

    ids = [slide_id_from_path(s) for s in slides]
    lower = [i.lower() for i in ids]
    return [i if lower.count(i.lower()) == 1
            else f"{i}-{hashlib.sha1(str(s).encode()).hexdigest()[:8]}"
            for i, s in zip(ids, slides, strict=True)]


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def expected_fingerprint(detector: Any, config: Mapping[str, Any], request: Any) -> Any:
    """The fingerprint `detectors/job.py` would store for `request` (same steps)."""
    from ..detectors.job import run_fingerprint
    from ..engine.run import Normalisation
    from ..models.backends import resolve_backend

    options = detector.resolve_options(request.options)
    norm = Normalisation.from_config(dict(config)).to_dict()
    backend = resolve_backend(request.backend, request.device, detector.task)
    return _canonical(run_fingerprint(detector, config, options, norm, backend))


def finished(request: Any, detector: Any, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """summary.json of the slide's finished run when it matches `request`, else None."""
    from ..detectors.result import read_summary
    from ..engine.heatmap import FINAL_NAME, PARTIAL_SUFFIX, HeatmapStore

    out = Path(request.out)
    if request.overwrite or (out / (FINAL_NAME + PARTIAL_SUFFIX)).exists():
        return None
    if not (out / FINAL_NAME).is_dir() or not (out / detector.results_file).is_file():
        return None
    try:
        summary = read_summary(out, check=True)
        attrs = HeatmapStore.open(out / FINAL_NAME).attrs
    except WsiDetectError:
        return None
    slide = (summary.get("slide") or {}).get("path")
    if (summary.get("task") != detector.task or not summary.get("complete")
            or not attrs.get("complete") or not slide
            or Path(slide).resolve() != Path(request.slide).resolve()):
        return None
    if _canonical(attrs.get("params")) != expected_fingerprint(detector, config, request):
        return None
    have = summary.get("parameters") or {}
    want = detector.defaults(config, request.params)
    if any(_canonical(have.get(k)) != _canonical(v) for k, v in want.items()):
        return None
    if have.get("region") is not None or bool(have.get("tissue_mask")) != request.use_tissue:
        return None
    return summary
