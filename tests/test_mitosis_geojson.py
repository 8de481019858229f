"""QuPath export of mitosis results: Point detections + the hotspot annotation."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from napari_wsi_detect.annotations.geojson import read_geojson, write_geojson
from napari_wsi_detect.annotations.point_truth import read_point_sets
from napari_wsi_detect.annotations.points import mitoses_to_features, read_mitosis_features
from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson
from napari_wsi_detect.postprocess.mitotic_count import hotspot


@dataclass(frozen=True)
class M:  # the shape of postprocess.blobs.Mitosis
    x: float
    y: float
    score: float
    area_um2: float


ITEMS = [M(1000.5, 2000.25, 0.91, 55.0), M(1040.0, 2010.0, 0.62, 41.5),
         M(30_000.0, 15_000.0, 0.55, 70.25)]


def test_written_file_is_what_qupath_reads_and_reads_back(tmp_path):
    hs = hotspot([(m.x, m.y) for m in ITEMS], 0.25, (40_000, 30_000))
    path = write_geojson(tmp_path / "mitoses.geojson", mitoses_to_features(ITEMS, hs))
    doc = json.loads(path.read_text())
    assert check_qupath_geojson(doc) == []
    points = [f for f in doc["features"] if f["geometry"]["type"] == "Point"]
    assert len(points) == 3
    p0 = points[0]["properties"]
    assert p0["objectType"] == "detection"
    assert p0["classification"] == {"name": "Mitosis", "color": [255, 200, 0]}
    assert p0["measurements"] == {"score": 0.91, "area_um2": 55.0}
    (rect,) = [f for f in doc["features"] if f["geometry"]["type"] == "Polygon"]
    props = rect["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "Hotspot"
    assert props["name"] == "Hotspot: 2 mitoses / 2.37 mm²"
    assert props["measurements"]["count"] == 2
    assert props["measurements"]["per_10_hpf"] == pytest.approx(2.0)

    back = read_mitosis_features(read_geojson(path))
    assert back.xy.tolist() == [[m.x, m.y] for m in ITEMS]
    assert back.scores.tolist() == [m.score for m in ITEMS]
    assert back.area_um2.tolist() == [m.area_um2 for m in ITEMS]
    h = back.hotspot
    assert (h["x"], h["y"], h["w"], h["h"]) == pytest.approx((hs.x, hs.y, hs.w, hs.h), abs=1e-3)
    assert h["count"] == 2 and h["area_mm2"] == pytest.approx(2.37, abs=1e-3)
    # As point truth / detections for `evaluate f1`: the rectangle is skipped.
    (s,) = read_point_sets(path)
    assert s.xy.tolist() == back.xy.tolist() and s.scores.tolist() == back.scores.tolist()


def test_no_mitoses_no_hotspot_is_an_empty_collection(tmp_path):
    assert mitoses_to_features([], None) == []
    path = write_geojson(tmp_path / "m.geojson", [])
    doc = json.loads(path.read_text())
    assert doc == {"type": "FeatureCollection", "features": []}
    back = read_mitosis_features(read_geojson(path))
    assert back.xy.shape == (0, 2) and back.hotspot is None


def test_one_mitosis_is_named_in_the_singular_and_nan_area_dropped():
    hs = hotspot([(5.0, 5.0)], 0.25, (1000, 1000))
    feats = mitoses_to_features([M(5.0, 5.0, 0.7, float("nan"))], hs)
    assert feats[0].measurements == {"score": 0.7}
    assert feats[1].name.startswith("Hotspot: 1 mitosis / ")
    assert np.isclose(feats[1].measurements["count"], 1)
