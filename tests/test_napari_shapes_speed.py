"""Result layers that stay responsive and readable (docs/napari.md, "Responsiveness").

* The regions are drawn simplified (fewer vertices, every point within 0.75 map cell of
  the exact outline), while export writes the exact, unsimplified regions unless a
  region was edited by hand (then as edited).
* The result style: edges by score, light fill (none on holes), score text, and an edge
  width that follows the zoom in screen pixels (throttled).
* napari's compiled triangulation (bermuda) is the one in use.
* The live heatmap tints computed ROIs (p = 0 included) and does not take the selection.

Layers are built without a viewer where that suffices; the zoom and heatmap tests use a
hidden viewer (a display is needed: run under xvfb-run)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("napari")

import shapely  # noqa: E402
from napari.layers import Layer  # noqa: E402
from shapely.geometry import Polygon  # noqa: E402

from conftest import napari_viewer  # noqa: E402
from napari_wsi_detect._napari import layers as nl  # noqa: E402
from napari_wsi_detect._napari.heatmap_layer import (  # noqa: E402
    COMPUTED_FLOOR,
    LiveHeatmap,
    heatmap_colormap,
    layer_values,
)
from napari_wsi_detect._napari.shapes_io import (  # noqa: E402
    EXACT_KEY,
    FILL_ALPHA,
    SIMPLIFY_CELLS,
    regions_to_layer_data,
    simplify_rings,
)
from napari_wsi_detect._napari.writer import write_shapes  # noqa: E402
from napari_wsi_detect.engine.plan import MapGeometry  # noqa: E402
from napari_wsi_detect.postprocess.regions import extract_regions  # noqa: E402

MPP = 0.243


def _ragged_map(seed: int = 3, size: int = 1280) -> tuple[np.ndarray, MapGeometry]:
    """A map with a few ragged blobs (staircase outlines, holes), as a real run gives."""
    from scipy import ndimage as ndi

    g = MapGeometry.for_slide((size * 8, size * 8), MPP, MPP, alpha=2)
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random(g.shape), 4)
    field = (field - field.min()) / np.ptp(field)
    return field.astype(np.float32), g


def _regions(threshold: float = 0.6):
    prob, g = _ragged_map()
    regions = extract_regions(prob, g, MPP, threshold, 0.0, 0.0)
    assert len(regions) >= 5 and any(len(r.polygons[0][1]) for r in regions)
    return regions, g


def _export(layer, tmp_path) -> list:
    data, meta, _ = layer.as_layer_data_tuple()
    path = write_shapes(str(tmp_path / "out.geojson"), data, meta)[0]
    obj = json.loads(open(path, encoding="utf-8").read())
    return [shapely.geometry.shape(f["geometry"]) for f in obj["features"]]


def _worst_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from a vertex of either ring to the other ring."""
    ra, rb = shapely.linearrings(a), shapely.linearrings(b)
    return max(shapely.distance(shapely.points(a), rb).max(),
               shapely.distance(shapely.points(b), ra).max())


def test_display_is_simplified_within_tolerance_and_export_is_exact(tmp_path) -> None:
    regions, g = _regions()
    exact = regions_to_layer_data(regions, MPP, simplify=None)
    shown = regions_to_layer_data(regions, MPP)
    n_exact = sum(map(len, exact[0]))
    n_shown = sum(map(len, shown[0]))
    assert n_shown < n_exact / 1.8, (n_exact, n_shown)
    cell = g.cell_size0
    assert len(exact[0]) == len(shown[0])  # the same rings (outer + holes), each simplified
    worst = max(_worst_distance(a, b) for a, b in zip(exact[0], shown[0], strict=True))
    assert worst <= SIMPLIFY_CELLS * cell * 1.0001

    layer = Layer.create(*shown)
    assert layer.nshapes == len(shown[0])
    written = _export(layer, tmp_path)
    assert len(written) == len(regions)
    for geom, r in zip(written, regions, strict=True):
        assert geom.equals(r.geometry), "export must be the exact (unsimplified) region"
        assert len(shapely.get_coordinates(geom)) == len(shapely.get_coordinates(r.geometry))


def test_an_edited_region_exports_as_edited_the_others_exactly(tmp_path) -> None:
    regions, _ = _regions()
    layer = Layer.create(*regions_to_layer_data(regions, MPP))
    region_ids = layer.features["region"].to_numpy()
    first = int(np.flatnonzero(region_ids == 1)[0])
    data = [np.asarray(d).copy() for d in layer.data]
    data[first][0] += (40.0, -40.0)  # drag one vertex of region 1's outer ring
    layer.data = data
    written = _export(layer, tmp_path)
    edited = Polygon(np.asarray(layer.data[first])[:, ::-1])
    assert written[0].exterior.equals(edited.exterior)  # as the pathologist left it
    assert not written[0].equals(regions[0].geometry)
    for geom, r in zip(written[1:], regions[1:], strict=True):
        assert geom.equals(r.geometry)

    # Deleting a hole (one shape of a region) also makes that region "as drawn".
    holed = next(k for k, r in enumerate(regions) if len(r.polygons[0][1])) + 1
    hole = int(np.flatnonzero((layer.features["region"].to_numpy() == holed)
                              & layer.features["is_hole"].to_numpy())[0])
    layer.selected_data = {hole}
    layer.remove_selected()
    written = _export(layer, tmp_path)
    geom = written[holed - 1]
    assert len(geom.interiors) == len(regions[holed - 1].geometry.interiors) - 1


def test_simplify_rings_keeps_what_would_collapse_and_never_moves_more_than_asked() -> None:
    square = np.array([[0, 0], [8, 0], [8, 8], [0, 8]], float)  # one map cell
    stairs = np.array([[0, 0], [8, 0], [8, 8], [16, 8], [16, 16], [24, 16], [24, 24],
                       [0, 24]], float)
    out = simplify_rings([square, stairs], 6.0)
    assert out[0] is square  # would collapse to a line: kept exact
    assert len(out[1]) < len(stairs) and _worst_distance(stairs, out[1]) <= 6.0
    rng = np.random.default_rng(1)
    for _ in range(20):  # random staircase blobs
        m = np.zeros((40, 40), bool)
        m[10:30, 10:30] = rng.random((20, 20)) > 0.25
        from napari_wsi_detect.postprocess.regions import _polygon

        geom = _polygon(m, 0, 0, 16.0, (1e6, 1e6))
        for p in getattr(geom, "geoms", [geom]):
            for ring in [p.exterior, *p.interiors]:
                r = np.asarray(ring.coords)[:-1]
                [s] = simplify_rings([r], 12.0)
                assert _worst_distance(r, s) <= 12.0 * 1.0001


def test_result_style_fill_text_and_an_empty_result_with_the_same_columns() -> None:
    regions, _ = _regions()
    data, kwargs, _ = regions_to_layer_data(regions, MPP)
    layer = Layer.create(data, kwargs, "shapes")
    holes = layer.features["is_hole"].to_numpy()
    assert np.allclose(layer.face_color[~holes, 3], FILL_ALPHA)
    assert np.all(layer.face_color[holes, 3] == 0)  # a hole is not filled over
    text = layer.text.values
    labelled = [t for t in text if t]
    assert len(labelled) == len(regions)  # one score per region, not per ring
    assert labelled[0] == f"{regions[0].max_prob:.2f}"
    assert layer.metadata["edge_px"] > 0
    assert set(layer.metadata[EXACT_KEY]) <= set(range(1, len(regions) + 1))
    empty = Layer.create(*regions_to_layer_data([], MPP))
    assert empty.nshapes == 0
    assert set(empty.features.columns) == set(layer.features.columns)


def test_fast_triangulation_is_napari_bermuda() -> None:
    pytest.importorskip("bermuda")
    from napari.layers.shapes._shapes_models.shape import Shape

    assert nl.fast_triangulation() == "bermuda"
    regions, _ = _regions(0.5)
    data = regions_to_layer_data(regions, MPP, simplify=None)
    t = time.perf_counter()
    layer = Layer.create(*data)
    seconds = time.perf_counter() - t
    kinds = {type(s)._set_meshes.__name__ for s in layer._data_view.shapes}
    assert kinds == {Shape._set_meshes_compiled_bermuda.__name__}, kinds
    print(f"\n{layer.nshapes} shapes, {sum(map(len, data[0]))} vertices: {seconds:.3f} s")


@pytest.fixture
def viewer(request):
    return napari_viewer(request, show=False)


def test_edges_keep_their_screen_width_as_the_camera_zooms(viewer, qtbot) -> None:
    regions, _ = _regions()
    layer = viewer.add_layer(Layer.create(*regions_to_layer_data(regions, MPP)))
    follower = nl.readable_edges(viewer)
    assert nl.readable_edges(viewer) is follower  # once per viewer
    px = layer.metadata["edge_px"]

    def want() -> float:
        return px * layer.scale_factor / layer.scale[-1]

    layer.scale_factor = 40.0  # whole-slide zoom: 40 µm per screen pixel
    qtbot.waitUntil(lambda: np.allclose(layer.edge_width, want()), timeout=2000)
    applied = []
    original = nl.apply_edge_px
    nl.apply_edge_px = lambda ly: applied.append(1) or original(ly)
    try:
        t = time.perf_counter()
        for k in range(30):  # a burst of wheel steps: throttled, the last one wins
            layer.scale_factor = 40.0 / 1.1 ** (k + 1)
        burst_s = time.perf_counter() - t
        qtbot.waitUntil(lambda: np.allclose(layer.edge_width, want()), timeout=2000)
    finally:
        nl.apply_edge_px = original
    # At most one width change per throttle interval of the burst, plus the trailing one.
    assert len(applied) <= burst_s / nl.EDGE_THROTTLE_S + 2, (len(applied), burst_s)
    assert layer.current_edge_width == pytest.approx(want())  # shapes drawn next

    # A slider move replaces the shapes: the new ones get the screen width at once.
    new = Layer.create(*regions_to_layer_data(regions[:3], MPP))
    layer.data = []
    layer.add(new.data, shape_type=new.shape_type, edge_width=new.edge_width)
    assert np.allclose(layer.edge_width, want())
    layer.metadata["edge_px"] = 0  # opt out: a width of one's own stays
    layer.edge_width = 3.0
    layer.scale_factor = 1.0
    qtbot.wait(250)
    assert np.allclose(layer.edge_width, 3.0)


def test_live_heatmap_tints_computed_cells_and_keeps_the_selection(viewer) -> None:
    from napari_wsi_detect.engine.run import HeatmapTile

    slide = viewer.add_image(np.zeros((2048, 2048, 3), np.uint8), rgb=True, scale=(MPP, MPP))
    viewer.layers.selection.active = slide
    g = MapGeometry.for_slide((2048, 2048), MPP, MPP, alpha=2)
    heat = LiveHeatmap(viewer, g, slide)
    assert viewer.layers.selection.active is slide  # no layer-controls rebuild
    probs = np.zeros((8, 8), np.float32)
    probs[0, 0] = np.nan  # not computed
    heat.add_tile(HeatmapTile(r0=0, c0=0, probs=probs, roi_index=0, done=1, total=4,
                              elapsed=0.1, eta=None))
    heat.flush()
    assert heat.layer.data[0, 0] == 0 and np.all(heat.layer.data[0, 1:8] == COMPUTED_FLOOR)
    assert np.all(heat.layer.data[8:, 8:] == 0)
    cmap = heatmap_colormap()
    assert cmap.map(np.array([0.0]))[0, 3] == 0  # not computed: transparent
    tint = cmap.map(np.array([COMPUTED_FLOOR, 0.05, 0.1]))[:, 3]
    assert np.all((tint > 0.05) & (tint < 0.3))  # computed, nothing found: a faint veil
    assert cmap.map(np.array([0.9]))[0, 3] > 0.5
    v = layer_values(np.array([np.nan, 0.0, 0.5], np.float32))
    assert v.tolist() == pytest.approx([0.0, COMPUTED_FLOOR, 0.5])


def test_replace_shapes_swaps_a_result_in_place_and_export_stays_exact(viewer, tmp_path
                                                                       ) -> None:
    regions, _ = _regions()
    layer = viewer.add_layer(Layer.create(*regions_to_layer_data(regions[:4], MPP)))
    layer.scale_factor = 10.0
    nl.readable_edges(viewer)
    data = regions_to_layer_data(regions, MPP, metadata={"parameters": {"threshold": 0.6}})
    assert nl.replace_shapes(layer, data)
    assert layer.nshapes == len(data[0])
    assert layer.metadata["parameters"] == {"threshold": 0.6}
    assert np.allclose(layer.edge_width, layer.metadata["edge_px"] * 10.0 / layer.scale[-1])
    assert sum(1 for t in layer.text.values if t) == len(regions)
    cmap_edge = layer.edge_color[0]
    assert cmap_edge[3] == 1.0 and cmap_edge[1] > 0.5  # high score: the green end
    for geom, r in zip(_export(layer, tmp_path), regions, strict=True):
        assert geom.equals(r.geometry)
    other = ([np.array([[0, 0], [0, 9], [9, 9.]])], {"features": {"x": [1.0]}}, "shapes")
    assert not nl.replace_shapes(layer, other)  # other columns: the caller makes a new layer
    assert layer.nshapes == len(data[0])
    assert nl.replace_shapes(layer, regions_to_layer_data([], MPP))  # nothing found
    assert layer.nshapes == 0
