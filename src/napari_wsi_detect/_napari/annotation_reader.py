"""npe2 reader for annotation files: QuPath GeoJSON and Camelyon/ASAP XML.

Drop a `.geojson`, `.geojson.gz`, `.json` (GeoJSON content only) or ASAP `.xml` on napari
and get a Shapes layer (polygons, holes as `is_hole` shapes, see `shapes_io`) and/or a
Points layer, placed on the slide already open: coordinates in the files are level-0
pixels, mapped with the µm per pixel of the selected (or first) slide layer; with no
slide in the viewer the layers are in pixels. An invalid file raises AnnotationError,
which napari shows as a notification, and no layer is added.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_wsi_detect._napari.shapes_io import LayerData, features_to_layers
from napari_wsi_detect.annotations.geojson import Feature, read_geojson
from napari_wsi_detect.errors import AnnotationError

ANNOTATION_SUFFIXES = (".geojson", ".geojson.gz", ".json", ".xml")
_GEOJSON_TYPES = ('"FeatureCollection"', '"Feature"', '"Polygon"', '"MultiPolygon"',
                  '"Point"', '"MultiPoint"', '"LineString"')
_SNIFF_BYTES = 4096

PathLike = str | os.PathLike[str]


def _looks_like_annotations(path: Path) -> bool:
    """Claim a file only when its start says it is ours: a `.json` model config or an
    unrelated `.xml` is left to other readers (napari then tries the next plugin)."""
    name = path.name.lower()
    if not name.endswith(ANNOTATION_SUFFIXES) or path.is_dir():
        return False
    if name.endswith((".geojson", ".geojson.gz")):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES).decode("utf-8", errors="ignore")
    except OSError:
        return False
    if name.endswith(".xml"):
        return "<ASAP_Annotations" in head
    return '"type"' in head and any(t in head for t in _GEOJSON_TYPES)


def napari_get_annotation_reader(path: PathLike | Sequence[PathLike]
                                 ) -> Callable[..., list[LayerData]] | None:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(_looks_like_annotations(Path(p)) for p in paths):
        return None
    return read_annotations


def asap_to_features(path: PathLike) -> list[Feature]:
    """QuPath features of an ASAP XML file: polygons (tumour / exclusion by group) as
    annotations, Dot as Point and PointSet as MultiPoint detections."""
    from napari_wsi_detect.annotations.asap import read_asap_xml

    out = []
    for a in read_asap_xml(path):
        coords = a.coords.tolist()
        if a.kind == "polygon":
            ring = coords + [coords[0]] if coords[0] != coords[-1] else coords
            geometry: dict[str, Any] = {"type": "Polygon", "coordinates": [ring]}
            cls, otype = ("Exclusion" if a.is_exclusion else "Tumor"), "annotation"
        else:
            geometry = ({"type": "Point", "coordinates": coords[0]} if len(coords) == 1
                        else {"type": "MultiPoint", "coordinates": coords})
            cls, otype = (a.group or a.type or "Point"), "detection"
        out.append(Feature(geometry, otype, cls, _hex(a.color), {}, a.name,
                           properties={"asap_group": a.group or "", "asap_type": a.type}))
    return out


def _hex(color: str | None) -> tuple[int, int, int] | None:
    if not color or not color.startswith("#") or len(color) != 7:
        return None
    try:
        return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
    except ValueError:
        return None


def read_annotation_file(path: PathLike) -> list[Feature]:
    """Features of one annotation file (GeoJSON or ASAP XML); AnnotationError if invalid
    or empty."""
    p = Path(path)
    feats = asap_to_features(p) if p.name.lower().endswith(".xml") else read_geojson(p)
    if not feats:
        raise AnnotationError(f"{p.name} holds no annotations")
    return feats


def viewer_slide_mpp() -> tuple[bool, float | None]:
    """(found, mpp) of the slide layer of the current viewer: the selected layer if it is
    a slide opened by napari-wsi-detect, else the first such layer."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no Qt application: reading from a script
        viewer = None
    if viewer is None:
        return False, None
    return slide_mpp_of(viewer)


def slide_mpp_of(viewer: Any) -> tuple[bool, float | None]:
    active = viewer.layers.selection.active
    candidates = [active] + list(viewer.layers)
    for layer in candidates:
        meta = getattr(layer, "metadata", None) or {}
        if "path" in meta and "mpp" in meta and getattr(layer, "rgb", False):
            return True, meta["mpp"]
    return False, None


def read_annotations(path: PathLike | Sequence[PathLike], mpp: float | None = None
                     ) -> list[LayerData]:
    """Layer data of one or more annotation files; `mpp` None = that of the viewer's
    slide (pixels when there is none)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if mpp is None:
        _, mpp = viewer_slide_mpp()
    out: list[LayerData] = []
    for p in paths:
        feats = read_annotation_file(p)
        name = Path(p).name
        for suffix in (".geojson.gz", ".geojson", ".json", ".xml"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        out.extend(features_to_layers(feats, mpp, name=name,
                                      metadata={"source": str(p)}))
    return out
