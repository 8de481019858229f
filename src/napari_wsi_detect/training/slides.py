"""Which slides a run trains on and which annotation belongs to each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import AnnotationError, WsiDetectError
from .sampler import SlideCandidates, build_candidates
from .truth import find_annotation, load_truth

SLIDE_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide"}


def expand_slides(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Slide files from files and folders (a folder contributes its slide files, leaving
    out tumour-mask images)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir()
                if f.suffix.lower() in SLIDE_SUFFIXES and "mask" not in f.name.lower()
            )
            if not found:
                raise WsiDetectError(f"folder {p} holds no slide files ({', '.join(sorted(SLIDE_SUFFIXES))})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise WsiDetectError(f"training slide {p} does not exist")
    if not out:
        raise WsiDetectError("no training slides were given")
    return out


def pair_annotations(slides: Sequence[Path], annotations: Sequence[str | os.PathLike] | None
                     ) -> list[Path | None]:
    """The annotation of each slide: one file per slide in order, or looked up by name in
    the given folders / beside the slide (Camelyon16 layout). A slide named `tumor_*`
    without one is an error; `normal_*` and other slides without one are normal."""
    annotations = [Path(a) for a in (annotations or [])]
    files = [a for a in annotations if a.is_file()]
    folders = [a for a in annotations if a.is_dir()]
    missing = [a for a in annotations if not a.exists()]
    if missing:
        raise AnnotationError(f"annotation path {missing[0]} does not exist")
    if files and not folders:
        if len(files) != len(slides):
            raise AnnotationError(
                f"{len(files)} annotation files for {len(slides)} slides: give one per slide "
                "in the same order, or a folder with <slide name>.xml/.geojson/.json files"
            )
        return list(files)
    out: list[Path | None] = []
    for s in slides:
        ann = find_annotation(s, folders)
        if ann is None and s.stem.lower().startswith("tumo"):
            raise AnnotationError(
                f"{s.name} looks like a tumour slide but no annotation "
                f"({s.stem}.xml/.geojson/.json) was found beside it or in "
                f"{', '.join(map(str, folders)) or 'the annotation folders'}"
            )
        out.append(ann)
    return out


def load_candidates(slides: Sequence[Path], annotations: Sequence[Path | None]
                    ) -> list[SlideCandidates]:
    """The sampler's candidate cells of each slide, from its tumour truth."""
    from ..slide import open_slide

    cands = []
    for s, a in zip(slides, annotations, strict=True):
        size = None
        # Only a mask image needs the slide's level-0 size (to map its pixels onto level
        # 0); opening every slide just for that would be slow on a Camelyon folder.
        if a is not None and a.suffix.lower() not in {".xml", ".json", ".geojson"}:
            with open_slide(s) as sl:
                size = sl.dimensions
        cands.append(build_candidates(s, load_truth(a, size)))
    return cands


__all__ = ["SLIDE_SUFFIXES", "expand_slides", "load_candidates", "pair_annotations"]
