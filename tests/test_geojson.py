"""QuPath-compatible GeoJSON: what we write passes QuPath's rules, reading accepts the
shapes QuPath and others produce, broken files fail clearly."""

from __future__ import annotations

import copy
import gzip
import json
import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from napari_wsi_detect.annotations.geojson import (
    Feature,
    feature_collection,
    points_to_features,
    read_geojson,
    regions_to_features,
    write_geojson,
)
from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson
from napari_wsi_detect.engine.plan import MapGeometry
from napari_wsi_detect.errors import AnnotationError
from napari_wsi_detect.postprocess.regions import extract_regions


@pytest.fixture()
def regions():
    g = MapGeometry.for_slide((60 * 16, 80 * 16), 0.25, 0.25, alpha=2)
    p = np.zeros(g.shape, np.float32)
    p[10:30, 20:50] = 0.9
    p[15:25, 30:40] = 0.0  # hole
    p[40:45, 5:10] = 0.7
    p[45:47, 10:12] = 0.7  # diagonal touch -> MultiPolygon
    return extract_regions(p, g, opening_um=0)


@pytest.mark.parametrize("name", ["regions.geojson", "regions.geojson.gz"])
def test_written_regions_pass_qupath_rules_and_round_trip(tmp_path, regions, name):
    path = write_geojson(tmp_path / name, regions_to_features(regions))
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    obj = json.loads(gzip.decompress(raw) if name.endswith(".gz") else raw)
    assert check_qupath_geojson(obj) == []
    feats = obj["features"]
    assert [f["geometry"]["type"] for f in feats] == ["Polygon", "MultiPolygon"]
    props = feats[0]["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert props["measurements"]["max_probability"] == pytest.approx(0.9)
    # Holes are inner rings; coordinates are level-0 px on cell edges.
    rings = feats[0]["geometry"]["coordinates"]
    assert len(rings) == 2
    assert Polygon(rings[1]).bounds == (480, 240, 640, 400)
    back = read_geojson(path)
    assert [f.classification for f in back] == ["Tumor", "Tumor"]
    assert back[0].shape().equals(regions[0].geometry)
    assert back[0].id == feats[0]["id"] and back[0].color == (200, 0, 0)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary file


def test_points_and_nan_measurements(tmp_path):
    feats = points_to_features([(10.5, 20.0), (30, 40)], scores=[0.9, 0.8])
    feats[1].measurements["bad"] = math.nan  # QuPath chokes on NaN: dropped
    obj = feature_collection(feats)
    assert check_qupath_geojson(obj) == []
    assert "bad" not in obj["features"][1]["properties"]["measurements"]
    path = write_geojson(tmp_path / "m.geojson", feats)
    back = read_geojson(path)
    assert [f.object_type for f in back] == ["detection", "detection"]
    assert back[0].geometry == {"type": "Point", "coordinates": [10.5, 20.0]}


def test_reader_accepts_the_shapes_others_write(tmp_path):
    poly = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10]]]}
    multi = {"type": "MultiPolygon", "coordinates": [
        [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]],
         [[10, 10], [10, 20], [20, 20], [20, 10], [10, 10]]],
        [[[200, 200], [210, 200], [210, 210], [200, 200]]],
    ]}
    cases = {
        "bare_polygon.geojson": poly,
        "list.geojson": [{"type": "Feature", "geometry": multi,
                          "properties": {"classification": "Tumor"}}],
        "single.geojson": {"type": "Feature", "id": "PathDetectionObject", "geometry": {
            "type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
            "properties": {"classification": {"name": "Mitosis", "colorRGB": -65536},
                           "measurements": [{"name": "score", "value": 0.5}]}},
    }
    for name, obj in cases.items():
        (tmp_path / name).write_text(json.dumps(obj))
    (bare,) = read_geojson(tmp_path / "bare_polygon.geojson")
    assert bare.geometry["coordinates"][0][-1] == [0.0, 0.0]  # closed on read
    (lst,) = read_geojson(tmp_path / "list.geojson")
    assert lst.classification == "Tumor" and lst.color is None
    assert len(lst.geometry["coordinates"][0]) == 2  # the hole survives
    assert lst.shape().area == pytest.approx(100 * 100 - 100 + 50)
    (single,) = read_geojson(tmp_path / "single.geojson")
    assert single.object_type == "detection" and single.color == (255, 0, 0)
    assert single.measurements == {"score": 0.5}
    gz = tmp_path / "g.geojson.gz"
    gz.write_bytes(gzip.compress(json.dumps(poly).encode()))
    assert read_geojson(gz)[0].geometry_type == "Polygon"


@pytest.mark.parametrize("bad, match", [
    ("{not json", "not valid JSON"),
    ('{"type": "GeometryCollection", "geometries": []}', "unsupported"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1, "a"], [1, 1]]]}', "finite number"),
    ('{"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}', "3 distinct"),
    ('{"type": "Point", "coordinates": [NaN, 1]}', "finite number"),
    ('{"type": "Feature", "geometry": null}', "no geometry"),
    ('{"type": "Circle", "coordinates": [0, 0]}', "unsupported"),
])
def test_invalid_files_raise_annotation_error(tmp_path, bad, match):
    path = tmp_path / "bad.geojson"
    path.write_text(bad)
    with pytest.raises(AnnotationError, match=match):
        read_geojson(path)


def test_checker_rejects_what_qupath_rejects(regions):
    good = feature_collection(regions_to_features(regions))
    assert check_qupath_geojson(good) == []

    def broken(mutate):
        obj = copy.deepcopy(good)
        mutate(obj["features"][0])
        return check_qupath_geojson(obj)

    assert any("UUID" in p for p in broken(lambda f: f.update(id="region-1")))
    assert any("inside 'properties'" in p for p in broken(
        lambda f: f.update(objectType=f["properties"].pop("objectType"))))
    assert any("objectType" in p for p in broken(lambda f: f["properties"].pop("objectType")))
    assert any("colour" in p for p in broken(
        lambda f: f["properties"]["classification"].pop("color")))
    assert any("finite" in p for p in broken(
        lambda f: f["properties"]["measurements"].update(x=float("nan"))))
    assert any("not closed" in p for p in broken(
        lambda f: f["geometry"]["coordinates"][0].pop()))
    assert check_qupath_geojson({"type": "Feature"}) == [
        "top level must be a GeoJSON FeatureCollection"]
    assert check_qupath_geojson(feature_collection([Feature(
        {"type": "Point", "coordinates": [1, 2]}, classification="Other", color=(1, 2, 3))])) == []
