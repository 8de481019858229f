"""Phantom slides with primary-tumour-like regions (`primary=N` / `--primary N`): large,
irregular, ragged regions with stroma holes, whose truth (GeoJSON inner rings, level-5
mask) matches the pixels; and today's default phantoms unchanged by the option."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from shapely.geometry import Polygon
from skimage.color import rgb2hed

from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.phantom import load_phantom_truth, phantom_layout, write_phantom

# sha256 of the truth files of the session phantom (seed 7, 4096 x 3072, 0.243 µm/px),
# recorded with the generator before primary tumours existed (the GeoJSON names its mask
# file, so the slide name matters: `phantom.tif`): a default phantom (the
# bundled metastasis model's training data) must stay byte-identical.
SMALL_GEOJSON_SHA256 = "afc3b50117515b7c3c1ff89be59a6023cc8fcd5538cd658244e9c9024a0f6588"
SMALL_MASK_SHA256 = "ebbc44fd94f6e6fd368746f099f6f617b89bfd5c4831a65dff51328275620ae6"
PRIMARY = dict(seed=11, size=(6144, 4608), mpp=0.243, primary=1)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_phantom_truth_is_byte_identical_to_before(phantom_small):
    geojson = phantom_small.with_suffix(".geojson")
    mask = phantom_small.with_name(phantom_small.stem + ".tumour-mask.tif")
    assert sha256(geojson) == SMALL_GEOJSON_SHA256
    assert sha256(mask) == SMALL_MASK_SHA256
    assert "primary" not in json.loads(geojson.read_text())["phantom"]


@pytest.fixture(scope="module")
def primary_slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("primary") / "primary.tif"
    truth = write_phantom(out, **PRIMARY)
    return out, truth


def test_primary_region_is_large_irregular_and_has_holes(primary_slide):
    _, truth = primary_slide
    assert truth.counts()["primary"] == 1 and truth.counts()["tumours"] == 1  # no metastases by default
    t = truth.tumours[0]
    assert t.size_class == "primary" and len(t.holes) >= 2
    shape = Polygon(t.polygon, t.holes)
    assert shape.is_valid
    tissue_um2 = _tissue_um2(truth)
    assert 0.1 < t.area_um2 / tissue_um2 < 0.6  # a large share of the section
    assert t.area_um2 == pytest.approx(shape.area * truth.mpp**2, rel=1e-6)
    # ragged and lobulated: far from a disc or an ellipse (isoperimetric quotient 1 and
    # > 0.95 for the elongations used); raggedness grows with size (0.63 here, 0.5 mm)
    outer = Polygon(t.polygon)
    assert 4 * np.pi * outer.area / outer.length**2 < 0.75
    assert outer.area / outer.convex_hull.area < 0.93


def _tissue_um2(truth) -> float:
    layout, _ = phantom_layout(truth.seed, truth.size, truth.mpp, primary=1)
    ys, xs = np.mgrid[16 : truth.size[1] : 32, 16 : truth.size[0] : 32]
    depth = layout.fields(xs.ravel().astype(float), ys.ravel().astype(float))["depth_um"]
    return float((depth > 0).sum() * (32 * truth.mpp) ** 2)


def test_mask_and_geojson_leave_the_holes_out(primary_slide):
    path, truth = primary_slide
    t = truth.tumours[0]
    mask = truth.read_mask()
    ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    cx, cy = (xs.ravel() + 0.5) * 32, (ys.ravel() + 0.5) * 32
    from skimage.measure import points_in_poly

    centres = np.stack([cx, cy], 1)
    expect = points_in_poly(centres, t.polygon)
    for hole in t.holes:
        expect &= ~points_in_poly(centres, hole)
    agree = (mask.ravel() == t.label) == expect
    assert agree.mean() > 0.999  # only cells whose centre sits on an edge may differ
    hole_cells = points_in_poly(centres, t.holes[0])
    assert hole_cells.sum() > 4 and (mask.ravel()[hole_cells] == 0).all()
    # the GeoJSON has the holes as inner rings; reading it back gives the same truth
    doc = json.loads(path.with_suffix(".geojson").read_text())
    (feature,) = [f for f in doc["features"] if f["geometry"]["type"] == "Polygon"]
    assert len(feature["geometry"]["coordinates"]) == 1 + len(t.holes)
    assert feature["properties"]["classification"]["name"] == "Tumor"
    back = load_phantom_truth(path).tumours[0]
    assert len(back.holes) == len(t.holes)
    assert np.abs(back.holes[0] - t.holes[0]).max() < 0.01
    assert doc["phantom"]["primary"] == 1


def test_holes_look_like_stroma_and_tumour_like_tumour(primary_slide):
    from napari_wsi_detect.slide import open_slide

    path, truth = primary_slide
    t = truth.tumours[0]
    hole = Polygon(max(t.holes, key=lambda h: Polygon(h).area))
    tumour = Polygon(t.polygon, t.holes).buffer(-40 / truth.mpp)
    with open_slide(path) as slide:
        def patch(p):
            x, y = p.x, p.y
            return slide.read_region(0, int(x) - 48, int(y) - 48, 96, 96)[..., :3]

        in_hole = patch(hole.representative_point())
        in_tumour = patch(tumour.representative_point())
    h_hole = rgb2hed(in_hole)[..., 0].mean()
    h_tumour = rgb2hed(in_tumour)[..., 0].mean()
    assert h_hole < 0.6 * h_tumour  # collagen: little haematoxylin
    assert in_hole.mean() > 150  # not glass-white either: pink stroma, and not empty
    assert in_hole.mean() < 245


def test_explicit_metastases_join_primaries_without_overlap():
    layout, notes = phantom_layout(11, (6144, 4608), 0.243, primary=1, lesions={"macro": 0, "micro": 1, "itc": 2})
    classes = [les.size_class for les in layout.lesions]
    assert classes[0] == "primary" and classes.count("itc") + classes.count("micro") + len(notes) == 3
    prim = Polygon(layout.lesions[0].polygon)
    for les in layout.lesions[1:]:
        assert not prim.intersects(Polygon(les.polygon))
    assert [les.label for les in layout.lesions] == list(range(1, len(layout.lesions) + 1))


def test_primary_bad_values_are_package_errors(tmp_path):
    with pytest.raises(WsiDetectError, match="normal slide"):
        write_phantom(tmp_path / "x.tif", size=(1024, 1024), tumour=False, primary=1)
    with pytest.raises(WsiDetectError, match="0 to 8"):
        phantom_layout(0, (1024, 1024), primary=9)
    with pytest.raises(WsiDetectError, match="whole number"):
        phantom_layout(0, (1024, 1024), primary=1.5)
    assert list(tmp_path.iterdir()) == []


def test_cli_primary_flag(tmp_path, capsys):
    from napari_wsi_detect.cli import main

    out = tmp_path / "p.tif"
    assert main(["phantom", str(out), "--seed", "3", "--size", "4096", "3072", "--primary", "1", "--quiet"]) == 0
    counts = json.loads(capsys.readouterr().out.split("counts: ")[1].splitlines()[0])
    assert counts["primary"] == 1 and counts == load_phantom_truth(out).counts()
    assert main(["phantom", str(tmp_path / "n.tif"), "--normal", "--primary", "1", "--quiet"]) == 2
    assert "normal slide" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["phantom", str(tmp_path / "n.tif"), "--primary", "12"])
    assert exc.value.code == 2
    assert not (tmp_path / "n.tif").exists()


def test_no_mitoses_or_imposters_in_the_stroma_holes():
    layout, _ = phantom_layout(1001, (4096, 3072), 0.972, primary=1)
    assert layout.lesions[0].holes
    xy = np.array([(f.x, f.y) for f in layout.mitoses + layout.imposters])
    assert len(xy) > 100
    assert not layout.hole_at(xy[:, 0], xy[:, 1]).any()
    lesion = layout.lesion_at(np.array([f.x for f in layout.mitoses]), np.array([f.y for f in layout.mitoses]))
    assert (lesion == 1).all()  # every mitosis in tumour, none in a hole
