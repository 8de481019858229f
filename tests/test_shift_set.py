"""phantom/shift_set.py (named shift conditions, definitions from the command line) and
the generator's lesion_contrast knob (fainter lesions, nothing else changes)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsi_detect.errors import WsiDetectError
from napari_wsi_detect.phantom import phantom_layout, render_phantom_region
from napari_wsi_detect.phantom.geometry import raster_polygon
from napari_wsi_detect.phantom.shift_set import CONDITIONS, _tag, parse_condition

SIZE = (2048, 1536)


def test_lesion_contrast_fades_the_tumour_and_leaves_the_rest() -> None:
    layout, _ = phantom_layout(7, SIZE, lesions={"macro": 0, "micro": 1, "itc": 0})
    poly = layout.lesions[0].polygon
    cx, cy = poly.mean(axis=0).astype(int)
    x, y, w, h = cx - 128, cy - 128, 256, 256
    inside = raster_polygon(poly, x, y, w, h)
    assert inside.mean() > 0.5
    kw = dict(seed=7, size=SIZE, lesions={"macro": 0, "micro": 1, "itc": 0})
    usual = render_phantom_region(x, y, w, h, **kw).astype(float)
    faint = render_phantom_region(x, y, w, h, lesion_contrast=0.6, **kw).astype(float)
    # lighter inside the lesion (less stain), untouched outside it (a 6 px margin for
    # nuclei whose centre is inside but whose edge overhangs)
    from scipy.ndimage import binary_dilation

    near = binary_dilation(inside, iterations=6)
    assert faint[inside].mean() > usual[inside].mean() + 5
    assert np.array_equal(faint[~near], usual[~near])
    # and the plan (the truth) is the same
    again, _ = phantom_layout(7, SIZE, lesions={"macro": 0, "micro": 1, "itc": 0},
                              lesion_contrast=0.6)
    np.testing.assert_array_equal(again.lesions[0].polygon, poly)
    with pytest.raises(WsiDetectError):
        phantom_layout(7, SIZE, lesion_contrast=0.0)


def test_named_conditions_and_command_line_definitions() -> None:
    mild = CONDITIONS["rescan-mild"].rescan
    assert (mild.h_gain, mild.e_gain, mild.blur_sigma_px, mild.gamma, mild.jpeg_quality) == (
        1.25, 0.75, 1.0, 0.9, 70)
    assert CONDITIONS["none"].rescan is None
    c = parse_condition("val:base=pale,gamma=0.8,lesions=0/3/1,lesion_contrast=0.7")
    assert c.rescan.h_gain == 0.7 and c.rescan.gamma == 0.8
    assert c.lesions == (0, 3, 1) and c.lesion_contrast == 0.7
    assert parse_condition("x:jpeg_quality=60").rescan.jpeg_quality == 60
    assert parse_condition("y:lesions=0/3/4").rescan is None
    with pytest.raises(WsiDetectError, match="unknown key"):
        parse_condition("z:hue=3")
    with pytest.raises(WsiDetectError, match="unknown shift condition"):
        parse_condition("nope")


def test_the_cache_folder_follows_the_definition() -> None:
    # the same generator setting shares base phantoms; another one gets its own folder
    none, imp = CONDITIONS["none"], CONDITIONS["more-imposters"]
    assert _tag(none.generator()) == _tag(CONDITIONS["rescan-mild"].generator())
    assert _tag(none.generator()) != _tag(imp.generator())
    assert "lesion_contrast" not in none.generator()
    assert CONDITIONS["faint-lesions"].generator()["lesion_contrast"] == 0.6
