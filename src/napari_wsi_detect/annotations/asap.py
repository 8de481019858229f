"""ASAP / Camelyon XML annotations (read only).

Format (ASAP, used by Camelyon16/17)::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="_0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="..." Y="..."/>...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="..."/></AnnotationGroups>
    </ASAP_Annotations>

Coordinates are level-0 pixels (float x, y). Camelyon16 groups: `_0` and `_1` are
tumour, `_2` is an exclusion (non-tumour drawn inside tumour); later files use the group
names `Tumor` / `Exclusion`, Camelyon17 `metastases`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AnnotationError
from .geojson import MAX_COORDINATE, coordinate_too_large

# ASAP type -> our kind. Rectangles are stored as their 4 corners; splines as their
# control points joined by straight lines (ASAP draws a Catmull-Rom curve through them,
# the straight-line outline differs by well under a level-5 pixel for typical spacing).
_KINDS = {
    "polygon": "polygon",
    "rectangle": "polygon",
    "spline": "polygon",
    "dot": "points",
    "pointset": "points",
}

TUMOUR_GROUPS = frozenset({"_0", "_1", "tumor", "tumour", "metastases", "metastasis"})
EXCLUSION_GROUPS = frozenset({"_2", "exclusion", "exclude", "negative", "non-tumor", "non-tumour"})


@dataclass
class Annotation:
    """One annotation: `coords` (N, 2) level-0 (x, y) floats; kind 'polygon'|'points'."""

    name: str
    group: str | None
    kind: str
    coords: np.ndarray
    type: str = ""  # the ASAP type as written (Polygon, Dot, PointSet, Rectangle, Spline)
    color: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def is_exclusion(self) -> bool:
        return (self.group or "").strip().lower() in EXCLUSION_GROUPS

    @property
    def is_tumour(self) -> bool:
        """Tumour polygon by Camelyon conventions: a polygon that is not an exclusion.

        Camelyon16 files use groups `_0`/`_1` or `Tumor`; many hand-made ASAP files leave
        PartOfGroup="None", which we also read as tumour (the file is a tumour outline).
        """
        return self.kind == "polygon" and not self.is_exclusion


def read_asap_xml(path: str | os.PathLike) -> list[Annotation]:
    """All annotations of an ASAP XML file, in file order."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as exc:
        raise AnnotationError(f"annotation file not found: {path}") from exc
    except ET.ParseError as exc:
        raise AnnotationError(
            f"{path.name} is not valid XML ({exc}); expected an ASAP/Camelyon annotation file"
        ) from exc
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from exc
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(
            f"{path.name}: root element is <{root.tag}>, expected <ASAP_Annotations> "
            "(an ASAP / Camelyon XML annotation file)"
        )
    groups = root.find("AnnotationGroups")
    group_parent = {}
    if groups is not None:
        for g in groups.findall("Group"):
            group_parent[g.get("Name", "")] = g.get("PartOfGroup")

    out = []
    container = root.find("Annotations")
    elements = container.findall("Annotation") if container is not None else []
    for index, el in enumerate(elements):
        name = el.get("Name") or f"Annotation {index}"
        type_ = el.get("Type") or ""
        kind = _KINDS.get(type_.lower())
        if kind is None:
            raise AnnotationError(
                f"{path.name}: annotation {name!r} has type {type_!r}; supported types are "
                "Polygon, Rectangle, Spline, Dot and PointSet"
            )
        coords = _coordinates(el, path.name, name)
        if kind == "polygon" and len(coords) < 3:
            raise AnnotationError(
                f"{path.name}: polygon {name!r} has {len(coords)} vertices (needs >= 3)"
            )
        if kind == "points" and len(coords) == 0:
            raise AnnotationError(f"{path.name}: {type_} {name!r} has no coordinates")
        group = el.get("PartOfGroup")
        if group in (None, "", "None"):
            group = None
        attributes = {
            k: v for k, v in el.attrib.items()
            if k not in ("Name", "Type", "PartOfGroup", "Color")
        }
        if group is not None and group_parent.get(group) not in (None, "None"):
            attributes["parent_group"] = str(group_parent[group])
        out.append(
            Annotation(
                name=name, group=group, kind=kind, coords=coords, type=type_,
                color=el.get("Color"), attributes=attributes,
            )
        )
    return out


def _coordinates(el: ET.Element, file_name: str, name: str) -> np.ndarray:
    box = el.find("Coordinates")
    items = box.findall("Coordinate") if box is not None else []
    rows = []
    for i, c in enumerate(items):
        try:
            order = float(c.get("Order", i))
            rows.append((order, float(c.get("X")), float(c.get("Y"))))
        except (TypeError, ValueError) as exc:
            raise AnnotationError(
                f"{file_name}: annotation {name!r} has a coordinate without numeric X/Y "
                f"({dict(c.attrib)})"
            ) from exc
    rows.sort(key=lambda r: r[0])  # `Order` is the vertex order, not the file order
    coords = np.array([(x, y) for _, x, y in rows], dtype=np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(coords)):
        raise AnnotationError(f"{file_name}: annotation {name!r} has non-finite coordinates")
    if coords.size and float(np.abs(coords).max()) > MAX_COORDINATE:
        raise AnnotationError(coordinate_too_large(
            f"{file_name}: annotation {name!r}", float(np.abs(coords).max())))
    return coords
