"""QuPath GeoJSON of mitosis results: Point detections and the hotspot (METHODS §5).

* Each mitosis is a Point *detection* (`objectType` "detection"), classified
  "Mitosis" with its colour, `measurements` {score, area_um2}; QuPath lists them under
  detections and colours them by class.
* The hotspot (`postprocess.mitotic_count.Hotspot`) is a rectangle *annotation*
  classified "Hotspot", named "Hotspot: N mitoses / 2.37 mm²", with measurements
  {count, area_mm2, per_10_hpf}: QuPath shows the name on the slide and the numbers in
  its measurement table.

`read_mitosis_features` reads such a file back (and any QuPath point file): the points
with their scores and areas, and the hotspot when there is one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geojson import MITOSIS_CLASS, Feature, shape_to_geometry

HOTSPOT_CLASS = ("Hotspot", (0, 200, 255))  # light blue: stands out on H&E and inferno


def mitosis_feature(m: Any) -> Feature:
    """A QuPath Point detection of one mitosis (`x`, `y` level-0 px, `score`,
    `area_um2`)."""
    measurements = {"score": float(m.score)}
    area = getattr(m, "area_um2", None)
    if area is not None and math.isfinite(float(area)):
        measurements["area_um2"] = float(area)
    return Feature({"type": "Point", "coordinates": [float(m.x), float(m.y)]}, "detection",
                   MITOSIS_CLASS[0], MITOSIS_CLASS[1], measurements)


def hotspot_name(hotspot: Any) -> str:
    n = int(hotspot.count)
    return f"Hotspot: {n} mitos{'i' if n == 1 else 'e'}s / {hotspot.area_mm2:.2f} mm²"


def hotspot_feature(hotspot: Any) -> Feature:
    """The hotspot rectangle as a QuPath annotation with its count."""
    from shapely.geometry import box

    geom = box(hotspot.x, hotspot.y, hotspot.x + hotspot.w, hotspot.y + hotspot.h)
    measurements = {"count": float(hotspot.count), "area_mm2": float(hotspot.area_mm2)}
    per = getattr(hotspot, "per_10_hpf", None)
    if per is not None and math.isfinite(per):
        measurements["per_10_hpf"] = float(per)
    if getattr(hotspot, "tissue_fraction", None) is not None:
        measurements["tissue_fraction"] = float(hotspot.tissue_fraction)
    return Feature(shape_to_geometry(geom), "annotation", HOTSPOT_CLASS[0], HOTSPOT_CLASS[1],
                   measurements, hotspot_name(hotspot))


def mitoses_to_features(items: Iterable[Any], hotspot: Any = None) -> list[Feature]:
    """QuPath features of a mitosis result: one Point detection per item, then the
    hotspot annotation when given."""
    out = [mitosis_feature(m) for m in items]
    if hotspot is not None:
        out.append(hotspot_feature(hotspot))
    return out


@dataclass
class MitosisFile:
    """What `read_mitosis_features` found: (N, 2) level-0 x, y, scores and areas (NaN
    when absent), and the hotspot rectangle (x, y, w, h) with its count, if any."""

    xy: np.ndarray
    scores: np.ndarray
    area_um2: np.ndarray
    hotspot: dict[str, float] | None


def read_mitosis_features(features: Iterable[Feature]) -> MitosisFile:
    xy, scores, areas, hotspot = [], [], [], None
    for f in features:
        g = f.geometry
        if g["type"] == "Point":
            xy.append(g["coordinates"][:2])
            scores.append(f.measurements.get("score", math.nan))
            areas.append(f.measurements.get("area_um2", math.nan))
        elif (g["type"] == "Polygon" and f.classification == HOTSPOT_CLASS[0]
              and hotspot is None):
            ring = np.asarray(g["coordinates"][0], dtype=float)
            (x0, y0), (x1, y1) = ring.min(axis=0), ring.max(axis=0)
            hotspot = {"x": float(x0), "y": float(y0), "w": float(x1 - x0),
                       "h": float(y1 - y0), **f.measurements}
    return MitosisFile(np.asarray(xy, float).reshape(-1, 2), np.asarray(scores, float),
                       np.asarray(areas, float), hotspot)
