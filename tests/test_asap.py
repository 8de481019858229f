"""ASAP / Camelyon XML and NCRF JSON annotation readers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_file
from napari_wsi_detect.annotations.asap import read_asap_xml
from napari_wsi_detect.annotations.camelyon_json import read_camelyon_json
from napari_wsi_detect.errors import AnnotationError


@pytest.mark.parametrize(
    "name, kind, type_, n, first",
    [
        ("dot", "points", "Dot", 1, (23071.5605, 16831.0098)),
        ("pointset", "points", "PointSet", 5, (22793.7832, 16650.8945)),
        ("polygon", "polygon", "Polygon", 6, (22851.3281, 16551.1797)),
    ],
)
def test_real_asap_files(name, kind, type_, n, first):
    anns = read_asap_xml(shared_file(f"annotations/asap-format/asap-{name}.xml"))
    assert len(anns) == 1
    a = anns[0]
    assert (a.kind, a.type, a.name, a.group) == (kind, type_, "Annotation 0", None)
    assert a.coords.shape == (n, 2)
    assert tuple(a.coords[0]) == pytest.approx(first)
    assert a.is_tumour == (kind == "polygon")


CAMELYON_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="100" Y="200" />
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="100" Y="0" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Rectangle" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="10" Y="10" /><Coordinate Order="1" X="20" Y="10" />
        <Coordinate Order="2" X="20" Y="20" /><Coordinate Order="3" X="10" Y="20" />
      </Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes /></Group>
    <Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_camelyon_groups_and_vertex_order(tmp_path):
    p = tmp_path / "Tumor_999.xml"
    p.write_text(CAMELYON_XML)
    tumour, excl = read_asap_xml(p)
    assert tumour.group == "_0" and tumour.is_tumour and not tumour.is_exclusion
    np.testing.assert_array_equal(tumour.coords, [[0, 0], [100, 0], [100, 200]])  # by Order
    assert excl.kind == "polygon" and excl.type == "Rectangle"
    assert excl.is_exclusion and not excl.is_tumour


@pytest.mark.parametrize(
    "text, match",
    [
        ("<ASAP_Annotations><Annotations>", "not valid XML"),
        ("<Annotations/>", "expected <ASAP_Annotations>"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a" Type="Circle"><Coordinates/>'
         "</Annotation></Annotations></ASAP_Annotations>", "supported types"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon"><Coordinates>'
         '<Coordinate Order="0" X="1" Y="2"/></Coordinates></Annotation></Annotations>'
         "</ASAP_Annotations>", "needs >= 3"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a" Type="Dot"><Coordinates>'
         '<Coordinate Order="0" X="one" Y="2"/></Coordinates></Annotation></Annotations>'
         "</ASAP_Annotations>", "numeric X/Y"),
    ],
)
def test_invalid_xml_raises_annotation_error(tmp_path, text, match):
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(AnnotationError, match=match):
        read_asap_xml(p)


def test_missing_xml_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        read_asap_xml(tmp_path / "nope.xml")


def test_real_ncrf_json():
    anns = read_camelyon_json(shared_file("annotations/camelyon16-ncrf-json/Tumor_107.json"))
    groups = [a.group for a in anns]
    assert groups.count("positive") == 2 and groups.count("negative") == 3
    assert all(a.kind == "polygon" and a.coords.shape[1] == 2 for a in anns)
    assert [a.is_tumour for a in anns] == [True, True, False, False, False]
    normal = read_camelyon_json(shared_file("annotations/camelyon16-ncrf-json/Normal_017.json"))
    assert not any(a.is_tumour for a in normal)


def test_invalid_ncrf_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"positive": [{"name": "a", "vertices": [[1, 2]]}]}')
    with pytest.raises(AnnotationError, match=">= 3"):
        read_camelyon_json(p)
    p.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        read_camelyon_json(p)
