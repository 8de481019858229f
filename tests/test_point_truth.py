"""Point annotations (mitoses): GeoJSON, ASAP Dot/PointSet, MIDOG++ COCO, CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_file
from napari_wsi_detect.annotations.point_truth import read_point_sets
from napari_wsi_detect.errors import AnnotationError


def test_real_asap_dot_and_pointset():
    (dot,) = read_point_sets(shared_file("annotations/asap-format/asap-dot.xml"))
    assert dot.case_id == "asap-dot" and dot.xy.tolist() == [[23071.5605, 16831.0098]]
    (ps,) = read_point_sets(shared_file("annotations/asap-format/asap-pointset.xml"))
    assert ps.xy.shape == (5, 2) and tuple(ps.xy[1]) == pytest.approx((22746.7793, 16708.4414))
    assert ps.scores is None


def test_real_asap_polygon_is_not_point_truth():
    with pytest.raises(AnnotationError, match="asap-polygon.xml holds only polygons"):
        read_point_sets(shared_file("annotations/asap-format/asap-polygon.xml"))


def test_real_midogpp_coco():
    path = shared_file("annotations/midogpp/MIDOG++.json")
    sets = read_point_sets(path)
    raw = json.loads(path.read_text())
    assert len(sets) == len(raw["images"]) == 553
    by_id = {s.case_id: s for s in sets}
    assert "001" in by_id  # "001.tiff" -> "001"
    assert sum(len(s) for s in sets) == sum(a["category_id"] == 1 for a in raw["annotations"])
    assert sum(s.excluded for s in sets) == sum(a["category_id"] == 2
                                                for a in raw["annotations"])
    # Box [x1, y1, x2, y2] -> its centre; image 1's mitotic figures, in file order.
    boxes = [a["bbox"] for a in raw["annotations"] if a["image_id"] == 1
             and a["category_id"] == 1]
    want = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    assert by_id["001"].xy.tolist() == [list(p) for p in want]


def test_coco_xywh_boxes_and_bad_references(tmp_path):
    doc = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 8, "file_name": "b.png"}],
           "categories": [{"id": 1, "name": "mitotic figure"},
                          {"id": 2, "name": "hard negative"}],
           "annotations": [{"image_id": 7, "category_id": 1, "bbox": [100, 200, 50, 50]},
                           {"image_id": 7, "category_id": 2, "bbox": [10, 20, 50, 50]}]}
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(doc))
    a, b = read_point_sets(p)
    assert a.case_id == "a" and a.xy.tolist() == [[125, 225]] and a.excluded == 1
    assert b.case_id == "b" and len(b) == 0  # an image without mitoses is still a case
    doc["annotations"][0]["image_id"] = 99
    p.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match="coco.json: annotation 0 refers to image 99"):
        read_point_sets(p)


def test_geojson_points_classes_and_scores(tmp_path):
    feats = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10, 20]},
         "properties": {"objectType": "detection",
                        "classification": {"name": "Mitosis", "color": [255, 200, 0]},
                        "measurements": {"score": 0.9}}},
        {"type": "Feature", "geometry": {"type": "MultiPoint",
                                         "coordinates": [[30, 40], [50, 60]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [70, 80]},
         "properties": {"classification": "Imposter"}},
        {"type": "Feature", "geometry": {"type": "Polygon",
                                         "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]},
         "properties": {"objectType": "annotation", "name": "Hotspot"}},
    ]
    p = tmp_path / "case-3.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    (s,) = read_point_sets(p)
    assert s.case_id == "case-3"
    assert s.xy.tolist() == [[10, 20], [30, 40], [50, 60]] and s.excluded == 1
    assert s.scores[0] == 0.9 and np.isnan(s.scores[1:]).all()
    empty = tmp_path / "none.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    assert len(read_point_sets(empty)[0]) == 0  # a case without mitoses
    polys = tmp_path / "tumour.geojson"
    polys.write_text(json.dumps({"type": "FeatureCollection", "features": feats[3:]}))
    with pytest.raises(AnnotationError, match="tumour.geojson holds 1 feature.* no Point"):
        read_point_sets(polys)


@pytest.mark.parametrize("text, xy, scores, excluded", [
    ("10,20\n30.5,40\n", [[10, 20], [30.5, 40]], None, 0),
    ("x,y\n10,20\n", [[10, 20]], None, 0),
    ("10,20,0.9\n30,40,0.1,imposter\n", [[10, 20]], [0.9], 1),
    ("score,label,y,x\n0.7,1,20,10\n0.2,0,40,30\n", [[10, 20]], [0.7], 1),
    ("", [], None, 0),
    ("x;y;score\n10.5;20;0.3\n", [[10.5, 20]], [0.3], 0),
    ("10\t20\n", [[10, 20]], None, 0),
])
def test_csv_points(tmp_path, text, xy, scores, excluded):
    p = tmp_path / "pts.csv"
    p.write_text(text)
    (s,) = read_point_sets(p)
    assert s.xy.tolist() == xy and s.excluded == excluded
    assert (s.scores is None) if scores is None else s.scores.tolist() == scores


def test_csv_with_a_case_column_gives_one_set_per_case(tmp_path):
    p = tmp_path / "all.csv"
    p.write_text("image,x,y\n001.tiff,1,2\n002.tiff,3,4\n001.tiff,5,6\n")
    sets = {s.case_id: s.xy.tolist() for s in read_point_sets(p)}
    assert sets == {"001": [[1, 2], [5, 6]], "002": [[3, 4]]}


@pytest.mark.parametrize("text, match", [
    ("10,20\nten,30\n", r"pts.csv line 2: expected numbers"),
    ("a,b\n1,2\n", r"pts.csv: the header 'a,b' names no x and y"),
    ("x,y,score\n1,2,high\n", r"pts.csv line 2: score 'high'"),
    ("1e9,2\n", r"pts.csv: coordinate 1e\+09 is beyond"),
    ("nan,2\n", r"pts.csv: NaN or infinite"),
])
def test_bad_csv_names_the_file(tmp_path, text, match):
    p = tmp_path / "pts.csv"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=match):
        read_point_sets(p)


def test_xml_entities_are_refused_not_expanded(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    xxe = tmp_path / "xxe.xml"
    xxe.write_text(
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<ASAP_Annotations><Annotations><Annotation Name="&x;" Type="Dot"><Coordinates>'
        '<Coordinate Order="0" X="1" Y="2"/></Coordinates></Annotation></Annotations>'
        '</ASAP_Annotations>')
    with pytest.raises(AnnotationError, match="xxe.xml is not valid XML"):
        read_point_sets(xxe)
    lol = tmp_path / "lol.xml"
    ents = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(8))
    lol.write_text(
        f'<?xml version="1.0"?><!DOCTYPE r [{ents}]><ASAP_Annotations><Annotations>'
        '<Annotation Name="&i;" Type="Dot"><Coordinates><Coordinate Order="0" X="1" Y="2"/>'
        '</Coordinates></Annotation></Annotations></ASAP_Annotations>')
    with pytest.raises(AnnotationError, match="lol.xml is not valid XML"):
        read_point_sets(lol)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(AnnotationError, match="point file not found"):
        read_point_sets(tmp_path / "nope.csv")
    p = tmp_path / "pts.txt"
    p.write_text("1,2")
    with pytest.raises(AnnotationError, match="pts.txt: unknown point-annotation format"):
        read_point_sets(p)
