"""The shared tumour-truth reader (annotations/truth.py) used by training and evaluation."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from shapely.geometry import Point
from shapely.ops import unary_union

from conftest import shared_file
from napari_wsi_detect.annotations.truth import read_tumour_polygons
from napari_wsi_detect.errors import AnnotationError

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
HOLE = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]


def _shift(ring, dx, dy=0):
    return [[x + dx, y + dy] for x, y in ring]


def _feature(geometry, cls=None, name=None, geom_type="Polygon"):
    props = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    if name is not None:
        props["name"] = name
    return {"type": "Feature", "geometry": {"type": geom_type, "coordinates": geometry},
            "properties": props}


def _write(path, features):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _inside(polys, x, y):
    return any(p.contains(Point(x, y)) for p in polys)


def test_geojson_holes_multipolygons_and_class_names(tmp_path):
    feats = [
        _feature([SQUARE, HOLE], "Tumor"),
        _feature([[_shift(SQUARE, 200)], [_shift(SQUARE, 400)]], "tumour", geom_type="MultiPolygon"),
        _feature([_shift(SQUARE, 600)], " Metastasis "),
        _feature([_shift(SQUARE, 800)], "Other"),  # neither tumour nor exclusion
        _feature([_shift(HOLE, 200)], "Exclusion"),
        _feature([_shift(HOLE, 400)], "_2"),
        _feature([_shift(HOLE, 600)], None, name="Ignore"),  # unclassified: its name counts
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"classification": {"name": "Tumor"}}},  # points carry no area
    ]
    tumour, exclusion = read_tumour_polygons(_write(tmp_path / "a.geojson", feats))
    assert len(tumour) == 4  # the MultiPolygon gives one Polygon per part
    assert all(p.geom_type == "Polygon" for p in tumour + exclusion)
    assert _inside(tumour, 10, 10) and not _inside(tumour, 50, 50)  # the hole is kept
    assert _inside(tumour, 210, 10) and _inside(tumour, 410, 10) and _inside(tumour, 610, 10)
    assert not _inside(tumour, 810, 10) and not _inside(exclusion, 810, 10)
    assert len(exclusion) == 3
    assert all(_inside(exclusion, x, 50) for x in (250, 450, 650))


def test_unlabelled_geojson_is_all_tumour_even_beside_labelled_points(tmp_path):
    feats = [
        _feature([SQUARE]),
        _feature([_shift(SQUARE, 200)], name="Annotation 2"),  # a name that is no class
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
         "properties": {"classification": {"name": "Mitosis"}}},
    ]
    tumour, exclusion = read_tumour_polygons(_write(tmp_path / "b.geojson", feats))
    assert len(tumour) == 2 and exclusion == []
    # One labelled polygon makes the file a classified one: unlabelled outlines are ignored.
    feats.append(_feature([_shift(SQUARE, 400)], "Stroma"))
    tumour, _ = read_tumour_polygons(_write(tmp_path / "c.geojson", feats))
    assert tumour == []


def test_geojson_gzip_bare_list_and_self_intersection(tmp_path):
    bowtie = [[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]
    raw = json.dumps([_feature([bowtie], "Tumor")]).encode()
    path = tmp_path / "t.geojson.gz"
    path.write_bytes(gzip.compress(raw))
    tumour, _ = read_tumour_polygons(path)
    # make_valid splits the bow tie into its two triangles, each a valid Polygon.
    assert len(tumour) == 2 and all(p.is_valid for p in tumour)
    assert unary_union(tumour).area == pytest.approx(5000)


def test_asap_groups_and_ncrf(tmp_path):
    def ann(group, ring, type_="Polygon"):
        coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>'
                         for i, (x, y) in enumerate(ring[:-1]))
        return (f'<Annotation Name="a" Type="{type_}" PartOfGroup="{group}">'
                f"<Coordinates>{coords}</Coordinates></Annotation>")

    xml = ("<ASAP_Annotations><Annotations>"
           + ann("_0", SQUARE) + ann("_1", _shift(SQUARE, 200)) + ann("None", _shift(SQUARE, 400))
           + ann("_2", HOLE) + ann("Exclusion", _shift(HOLE, 200))
           + ann("_0", [[5, 5], [5, 5]], "Dot")
           + "</Annotations></ASAP_Annotations>")
    (tmp_path / "s.xml").write_text(xml)
    tumour, exclusion = read_tumour_polygons(tmp_path / "s.xml")
    assert len(tumour) == 3 and len(exclusion) == 2
    assert _inside(tumour, 410, 10) and _inside(exclusion, 50, 50)

    ncrf = tmp_path / "n.json"
    ncrf.write_text(json.dumps({"positive": [{"name": "_0", "vertices": SQUARE[:-1]}],
                                "negative": [{"name": "_2", "vertices": HOLE[:-1]}]}))
    tumour, exclusion = read_tumour_polygons(ncrf)
    assert len(tumour) == 1 and len(exclusion) == 1 and _inside(exclusion, 50, 50)
    ncrf.write_text(json.dumps({"negative": [{"vertices": HOLE[:-1]}]}))
    assert read_tumour_polygons(ncrf)[0] == []  # exclusion alone: a normal slide


def test_training_and_evaluation_read_the_same_truth(tmp_path):
    from napari_wsi_detect.evaluation.froc_io import load_truth_file
    from napari_wsi_detect.training.truth import load_truth

    big = [[0, 0], [6400, 0], [6400, 6400], [0, 6400], [0, 0]]
    # The right half excluded (open to the outside: the evaluation fills enclosed holes
    # of grown lesions, as the Camelyon16 script does).
    inner = [[3200, -10], [6410, -10], [6410, 6410], [3200, 6410], [3200, -10]]
    path = _write(tmp_path / "slide.geojson",
                  [_feature([big], "Tumor"), _feature([inner], "Exclusion")])
    train = load_truth(path)
    inside = train.contains(np.array([100.0, 5600.0]), np.array([100.0, 3200.0]))
    assert inside.tolist() == [True, False]  # the exclusion is cut out for training
    def label_at(truth, x, y):  # the mask is cropped to the lesions: outside it is 0
        r, c = y // 32 - truth.mask_offset[0], x // 32 - truth.mask_offset[1]
        m = truth.evaluation_mask
        return int(m[r, c]) if 0 <= r < m.shape[0] and 0 <= c < m.shape[1] else 0

    ev = load_truth_file(path)
    assert label_at(ev, 100, 100) > 0 and label_at(ev, 5600, 3200) == 0  # ... for evaluation
    whole = load_truth_file(_write(tmp_path / "whole.geojson", [_feature([big], "Tumor")]))
    assert label_at(whole, 5600, 3200) > 0  # without the exclusion that point is lesion


@pytest.mark.parametrize("content, name, message", [
    ("{not json", "bad.geojson", "not valid JSON"),
    (json.dumps({"type": "FeatureCollection", "features": [
        _feature([[[0, 0], [1, "x"], [2, 2]]], "Tumor")]}), "bad.geojson", "not a finite"),
    (json.dumps({"type": "Topology"}), "bad.geojson", "unsupported GeoJSON type"),
    ("<ASAP_Annotations><Annotations>", "bad.xml", "not valid XML"),
    (json.dumps({"positive": [{"vertices": [[0, 0], [1, 1]]}]}), "bad.json", ">= 3"),
    ("", "notes.txt", "unknown annotation format"),
])
def test_bad_files_raise_annotation_error(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(AnnotationError, match=message):
        read_tumour_polygons(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_tumour_polygons(tmp_path / "absent.xml")


def test_real_annotation_files(shared_data):
    tumour, exclusion = read_tumour_polygons(shared_file("annotations/asap-format/asap-polygon.xml"))
    assert len(tumour) == 1 and exclusion == [] and _inside(tumour, 22850.0, 16640.0)
    with pytest.raises(AnnotationError, match="only Dot annotations"):
        read_tumour_polygons(shared_file("annotations/asap-format/asap-dot.xml"))
    tumour, exclusion = read_tumour_polygons(
        shared_file("annotations/camelyon16-ncrf-json/Normal_017.json"))
    assert tumour == [] and len(exclusion) == 2
    tumour, exclusion = read_tumour_polygons(
        shared_file("annotations/camelyon16-ncrf-json/Tumor_107.json"))
    assert len(tumour) == 2 and len(exclusion) == 3
    # The exclusions lie inside the tumour: subtracting them removes ~1.7 Mpx² of it.
    cut = unary_union(tumour).difference(unary_union(exclusion)).area
    assert unary_union(tumour).area - cut == pytest.approx(1_702_222, rel=0.01)
