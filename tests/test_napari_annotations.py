"""napari annotation I/O: Shapes/Points layers <-> QuPath GeoJSON in level-0 pixels, and
the annotation reader (GeoJSON, ASAP XML). Layers are built without a viewer (no display
needed); the reader's contract is checked through npe2 as napari calls it."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Layer, Points, Shapes  # noqa: E402
from shapely.geometry import MultiPolygon, Polygon  # noqa: E402

from conftest import shared_file  # noqa: E402
from napari_wsi_detect._napari.annotation_reader import (  # noqa: E402
    napari_get_annotation_reader,
    read_annotations,
)
from napari_wsi_detect._napari.reader import napari_get_reader  # noqa: E402
from napari_wsi_detect._napari.shapes_export import layer_to_features  # noqa: E402
from napari_wsi_detect._napari.shapes_io import (  # noqa: E402
    features_to_layers,
    regions_to_layer_data,
)
from napari_wsi_detect._napari.writer import write_layer, write_points, write_shapes  # noqa: E402
from napari_wsi_detect.annotations.geojson import (  # noqa: E402
    Feature,
    load_geojson_object,
    shape_to_geometry,
)
from napari_wsi_detect.annotations.qupath_check import check_qupath_geojson  # noqa: E402
from napari_wsi_detect.engine.plan import MapGeometry  # noqa: E402
from napari_wsi_detect.errors import AnnotationError  # noqa: E402
from napari_wsi_detect.postprocess.regions import extract_regions  # noqa: E402

MPP = 0.25
DONUT = Polygon([(1000, 1000), (1400, 1000), (1400, 1400), (1000, 1400)],
                [[(1100, 1100), (1100, 1200), (1200, 1200), (1200, 1100)],
                 [(1250, 1250), (1250, 1300), (1300, 1300), (1300, 1250)]])
TRIANGLE = Polygon([(2000, 500), (2300, 500), (2150, 800)])


def _layers(data_tuples):
    return [Layer.create(*t) for t in data_tuples]


def _geoms(features):
    return [f.shape() for f in features if f.geometry_type in ("Polygon", "MultiPolygon")]


def _same(a, b) -> bool:
    return a.symmetric_difference(b).area < 1e-6 * max(a.area, 1.0)


def test_polygon_with_holes_and_multipolygon_round_trip_through_a_file(tmp_path) -> None:
    feats = [Feature(shape_to_geometry(DONUT), classification="Tumor",
                     measurements={"max_probability": 0.9}),
             Feature(shape_to_geometry(MultiPolygon([TRIANGLE, Polygon(
                 [(3000, 3000), (3100, 3000), (3100, 3100)])])), classification="Other",
                 color=(0, 128, 255))]
    [shapes] = _layers(features_to_layers(feats, MPP))
    # Holes are separate shapes flagged is_hole, grouped by region.
    assert shapes.nshapes == 5
    assert list(shapes.features["is_hole"]) == [False, True, True, False, False]
    assert list(shapes.features["region"]) == [1, 1, 1, 2, 2]
    out = write_layer(tmp_path / "rt.geojson", shapes, MPP)
    obj = load_geojson_object(out)
    assert check_qupath_geojson(obj) == []
    poly = obj["features"][0]["geometry"]
    assert poly["type"] == "Polygon" and len(poly["coordinates"]) == 3  # outer + 2 holes
    assert obj["features"][1]["geometry"]["type"] == "MultiPolygon"
    assert obj["features"][1]["properties"]["classification"] == {
        "name": "Other", "color": [0, 128, 255]}
    # ids survive the trip (QuPath keeps objects' identity on re-import).
    assert obj["features"][0]["id"] == feats[0].id
    [back] = _layers(read_annotations(out, mpp=MPP))
    g = _geoms(layer_to_features(back, MPP))
    assert _same(g[0], DONUT) and len(g[0].interiors) == 2
    assert _same(g[1], MultiPolygon([TRIANGLE, Polygon([(3000, 3000), (3100, 3000),
                                                        (3100, 3100)])]))


def test_layers_lie_on_the_slide_grid() -> None:
    """Level-0 corner coordinate X sits at world (X - 0.5)·mpp, where the slide layer
    (scale = mpp, pixel centres at index·mpp) draws the edge of pixel X."""
    [shapes] = _layers(features_to_layers([Feature(shape_to_geometry(TRIANGLE))], MPP))
    world = shapes.data_to_world(shapes.data[0][0])
    assert np.allclose(world, ((500 - 0.5) * MPP, (2000 - 0.5) * MPP))


def test_export_uses_level0_pixels_whatever_the_layer_transform(tmp_path) -> None:
    """A rectangle drawn by hand on a Shapes layer in µm (scale 1, no metadata) exports to
    the level-0 pixels under it."""
    um = np.array([[100.0, 200.0], [100.0, 300.0], [150.0, 300.0], [150.0, 200.0]])
    drawn = Shapes([um], shape_type="rectangle")
    feats = layer_to_features(drawn, MPP)
    xy = np.asarray(feats[0].geometry["coordinates"][0])
    assert xy[:, 0].min() == pytest.approx(200 / MPP + 0.5)
    assert xy[:, 1].max() == pytest.approx(150 / MPP + 0.5)
    # Same geometry in a layer with another scale/translate gives the same pixels.
    moved = Shapes([(um - 10.0) / 2.0], shape_type="rectangle", scale=(2.0, 2.0),
                   translate=(10.0, 10.0))
    xy2 = np.asarray(layer_to_features(moved, MPP)[0].geometry["coordinates"][0])
    assert np.allclose(np.sort(xy, axis=0), np.sort(xy2, axis=0))


def test_shape_drawn_next_to_results_becomes_its_own_annotation(tmp_path) -> None:
    [shapes] = _layers(features_to_layers([Feature(shape_to_geometry(DONUT))], MPP))
    shapes.add(np.array([[10.0, 10.0], [10.0, 60.0], [60.0, 60.0]]), shape_type="polygon")
    feats = layer_to_features(shapes, MPP)
    assert len(feats) == 2 and feats[1].classification == "Tumor"
    assert len(feats[0].shape().interiors) == 2


def test_regions_from_a_heatmap_export_with_their_holes(tmp_path) -> None:
    g = MapGeometry.for_slide((640, 640), 0.243, 0.243, alpha=2)
    prob = np.full(g.shape, 0.1, dtype=np.float32)
    prob[5:30, 5:30] = 0.9
    prob[12:18, 12:18] = 0.2  # a hole
    regions = extract_regions(prob, g, threshold=0.5, opening_um=0)
    assert len(regions) == 1 and len(regions[0].polygons[0][1]) == 1
    [layer] = _layers([regions_to_layer_data(regions, 0.243)])
    assert layer.nshapes == 2 and layer.features["is_hole"].tolist() == [False, True]
    assert layer.features["max_probability"][0] == pytest.approx(0.9)
    path = write_shapes(str(tmp_path / "regions.geojson.gz"), *layer.as_layer_data_tuple()[:2])[0]
    obj = json.loads(gzip.decompress(open(path, "rb").read()))
    assert check_qupath_geojson(obj) == []
    f = obj["features"][0]
    assert f["properties"]["objectType"] == "annotation"
    assert f["properties"]["measurements"]["max_probability"] == pytest.approx(0.9)
    assert _same(Polygon(f["geometry"]["coordinates"][0], f["geometry"]["coordinates"][1:]),
                 regions[0].geometry)


def test_points_round_trip_as_detections(tmp_path) -> None:
    feats = [Feature({"type": "Point", "coordinates": [120.5, 80.25]}, "detection", "Mitosis"),
             Feature({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, "detection",
                     "Imposter", (0, 160, 255))]
    [points] = _layers(features_to_layers(feats, MPP))
    assert isinstance(points, Points) and len(points.data) == 3
    path = write_points(str(tmp_path / "p.geojson"), *points.as_layer_data_tuple()[:2])[0]
    obj = load_geojson_object(path)
    assert check_qupath_geojson(obj) == []
    coords = [f["geometry"]["coordinates"] for f in obj["features"]]
    assert coords == [[120.5, 80.25], [1, 2], [3, 4]]
    assert {f["properties"]["objectType"] for f in obj["features"]} == {"detection"}
    assert obj["features"][2]["properties"]["classification"]["name"] == "Imposter"


def test_reader_accepts_qupath_variants(tmp_path) -> None:
    single = tmp_path / "single.json"
    single.write_text(json.dumps({
        "type": "Feature", "geometry": shape_to_geometry(DONUT),
        "properties": {"classification": "Tumor", "objectType": "annotation"}}))
    bare = tmp_path / "bare.geojson"
    bare.write_text(json.dumps([{"type": "Feature", "geometry": {
        "type": "Point", "coordinates": [5, 6]}, "properties": {}}]))
    assert napari_get_annotation_reader(str(single)) is not None
    [shapes] = _layers(read_annotations(str(single), mpp=MPP))
    assert shapes.nshapes == 3 and shapes.features["class"][0] == "Tumor"
    [points] = _layers(read_annotations(str(bare), mpp=MPP))
    assert np.allclose(points.data, [[6, 5]])


def test_invalid_geojson_raises_annotation_error(tmp_path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                   '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, "x"]]]}}]}')
    with pytest.raises(AnnotationError, match="not a finite number"):
        read_annotations(str(bad), mpp=MPP)
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(AnnotationError, match="no annotations"):
        read_annotations(str(empty), mpp=MPP)
    broken = tmp_path / "broken.geojson"
    broken.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        read_annotations(str(broken), mpp=MPP)


def test_reader_leaves_other_files_alone(tmp_path) -> None:
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps({"architecture": "scannet-fcn", "width": 0.125}))
    other_xml = tmp_path / "other.xml"
    other_xml.write_text("<?xml version='1.0'?><svg></svg>")
    assert napari_get_annotation_reader(str(model_json)) is None
    assert napari_get_annotation_reader(str(other_xml)) is None
    assert napari_get_annotation_reader(str(tmp_path / "slide.svs")) is None
    # ...and the slide reader leaves annotation files to us.
    for name in ("a.geojson", "a.geojson.gz", "a.json", "a.xml"):
        assert napari_get_reader(str(tmp_path / name)) is None


@pytest.mark.parametrize("name,kind,n", [("asap-polygon.xml", "shapes", 1),
                                         ("asap-dot.xml", "points", 1),
                                         ("asap-pointset.xml", "points", 5)])
def test_asap_xml_files_import(name, kind, n) -> None:
    path = shared_file(f"annotations/asap-format/{name}")
    assert napari_get_annotation_reader(str(path)) is not None
    [(data, kwargs, layer_kind)] = read_annotations(str(path), mpp=0.243)
    assert layer_kind == kind and len(data) == n
    if kind == "points":  # level-0 (x, y) -> data (row, col)
        assert data[0][1] == pytest.approx(23071.5605 if n == 1 else 22793.7832)


def test_asap_polygon_exports_back_to_the_same_pixels(tmp_path) -> None:
    path = shared_file("annotations/asap-format/asap-polygon.xml")
    [shapes] = _layers(read_annotations(str(path), mpp=0.243))
    out = write_layer(tmp_path / "asap.geojson", shapes, 0.243)
    ring = load_geojson_object(out)["features"][0]["geometry"]["coordinates"][0]
    assert [22851.328, 16551.18] in ring or any(
        abs(x - 22851.3281) < 1e-2 and abs(y - 16551.1797) < 1e-2 for x, y in ring)


def test_manifest_declares_widget_reader_and_writers() -> None:
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("napari-wsi-detect")
    assert [w.display_name for w in mf.contributions.widgets] == ["WSI Detect"]
    readers = {r.command: r.filename_patterns for r in mf.contributions.readers}
    assert "*.geojson" in readers["napari-wsi-detect.get_annotation_reader"]
    writers = {w.command: w.filename_extensions for w in mf.contributions.writers}
    assert writers["napari-wsi-detect.write_shapes"] == [".geojson", ".geojson.gz"]
