"""Annotations <-> napari Shapes / Points layers, always anchored in level-0 pixels.

Placement. The slide layer puts level-0 pixel *index* i at world ``i·mpp`` (pixel centres,
napari's convention), while annotations use the pixel-corner convention (pixel x covers
[x, x+1), docs/architecture.md). A level-0 coordinate X therefore sits at world
``(X − 0.5)·mpp``. Our Shapes/Points layers hold level-0 coordinates (row = y, col = x)
as *data* with ``scale = mpp`` and ``translate = −mpp/2``, so data = level-0 exactly and
the layers lie on the slide. Export goes data → world through the layer's own transform
(whatever scale/translate/affine the user gave it) and then world → level-0 through the
slide's mpp, so a layer drawn by hand in µm exports to the same level-0 pixels.

Holes. napari Shapes have no holes. A polygon with holes is stored as several shapes
sharing the feature ``region`` (one id per GeoJSON feature): the outer ring(s) with
``is_hole = False`` and each inner ring as its own shape with ``is_hole = True`` (drawn
dashed-free in the same colour, no fill). On export each hole is put back as an inner
ring of the outer ring of its region that contains it, so GeoJSON keeps true holes.
A hole whose region has no outer ring containing it (e.g. after editing) is exported as
a polygon of its own rather than dropped.

Display vs export. Detected regions are unions of map cells: staircase outlines with a
vertex at every cell corner. `regions_to_layer_data` (run in the widget's worker thread)
draws them simplified (Douglas-Peucker, `SIMPLIFY_CELLS` of a map cell, every vertex
within that distance of the exact outline, checked) so the Shapes layer gets 2-3x fewer
vertices, and keeps the exact rings in the layer metadata (``exact_regions``: per region
id, the exact rings and a digest of the displayed ones). Export writes a region's exact
rings as long as its displayed shapes are unchanged (same digest); a region edited by
hand is written as edited. So the GeoJSON of an unedited result is the unsimplified
result, exactly what the CLI writes.

Readable at every zoom. Result and annotation layers carry ``edge_px`` in their
metadata: `layers.ReadableEdges` (installed on the viewer by the live heatmap, or by
`layers.readable_edges(viewer)`) keeps their edge width at that many *screen* pixels as
the camera zooms (napari's edge_width is in data units; napari/napari#7939). Results get
a light fill (`FILL_ALPHA`), edges coloured by score, and the score as text at each
region (the first `MAX_LABELS` regions by score).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from napari_wsi_detect.annotations.geojson import (
    MITOSIS_CLASS,
    TUMOUR_CLASS,
    Feature,
    regions_to_features,
)

LayerData = tuple[Any, dict[str, Any], str]

KIND_REGIONS = "napari-wsi-detect regions"
KIND_ANNOTATIONS = "napari-wsi-detect annotations"
KNOWN_COLORS = {TUMOUR_CLASS[0]: TUMOUR_CLASS[1], MITOSIS_CLASS[0]: MITOSIS_CLASS[1]}
# Result style: edge colour by max probability on a blue -> green ramp (it stays visible on
# H&E pink/purple, on the white background and on the inferno heatmap, whose high values
# are yellow); a light fill of the same colour; the score as text at each region.
SCORE_COLORS = ((0.0, "#3d7dff"), (0.5, "#00c8ff"), (1.0, "#00ff8c"))
FILL_ALPHA = 0.12
TEXT_COLOR = "#00ff8c"
TEXT_SIZE = 9  # points, on screen (napari text does not scale with zoom)
MAX_LABELS = 500  # score labels on the best regions only (text costs per string)
EDGE_PX = 2.0  # edge width on screen, kept by layers.ReadableEdges as the camera zooms
# Points are sized in µm (data units); napari clamps their drawn size to these screen
# pixels, so zoomed out to a whole slide they stay visible instead of shrinking to dust.
POINT_SCREEN_PX = (7.0, 10_000.0)
SIMPLIFY_CELLS = 0.75  # display simplification tolerance, in map cells (< 1 cell)
EXACT_KEY = "exact_regions"


# --- placement -------------------------------------------------------------------------------
def placement(mpp: float | None) -> dict[str, Any]:
    """scale/translate making layer data = level-0 (row, col) on a slide of `mpp` µm/px
    (None: the slide is shown in pixels, world = level-0 pixel index)."""
    from napari_wsi_detect._napari.layers import UNITS, supports_units

    unit = float(mpp) if mpp else 1.0
    kwargs: dict[str, Any] = {"scale": (unit, unit), "translate": (-unit / 2, -unit / 2)}
    if mpp and supports_units():
        kwargs["units"] = (UNITS, UNITS)
    return kwargs


def _layer_matrix(meta: dict[str, Any]) -> np.ndarray:
    """3x3 data -> world matrix of a 2-D layer from its state dict (scale, translate,
    rotate, shear, affine), in napari's (row, col) order."""
    from napari.utils.transforms import Affine

    phys = Affine(
        scale=tuple(meta.get("scale", (1.0, 1.0)))[-2:],
        translate=tuple(meta.get("translate", (0.0, 0.0)))[-2:],
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        ndim=2,
    )
    m = np.asarray(phys.affine_matrix, dtype=float)[-3:, -3:]
    extra = meta.get("affine")
    if extra is not None:
        a = np.asarray(getattr(extra, "affine_matrix", extra), dtype=float)
        if a.shape[0] >= 3:
            m = a[-3:, -3:] @ m
    return m


def data_to_level0(yx: np.ndarray, meta: dict[str, Any], mpp: float | None) -> np.ndarray:
    """(N, 2) layer data (row, col) -> (N, 2) level-0 (x, y) pixels."""
    yx = np.asarray(yx, dtype=float)[:, -2:]
    m = _layer_matrix(meta)
    world = yx @ m[:2, :2].T + m[:2, 2]
    unit = float(mpp) if mpp else 1.0
    return world[:, ::-1] / unit + 0.5


def level0_to_data(xy: np.ndarray) -> np.ndarray:
    """(N, 2) level-0 (x, y) -> data (row, col) of a layer placed with `placement`."""
    return np.asarray(xy, dtype=float)[:, ::-1].copy()


# --- GeoJSON features -> layers ---------------------------------------------------------------
def _open_ring(ring: Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(ring, dtype=float)[:, :2]
    if len(arr) > 1 and np.array_equal(arr[0], arr[-1]):
        arr = arr[:-1]  # napari closes polygons itself
    return arr


def _rgba(color: Sequence[int] | None, alpha: float = 1.0) -> list[float]:
    r, g, b = color if color is not None else (255, 255, 0)
    return [r / 255, g / 255, b / 255, alpha]


def features_to_layers(
    features: Sequence[Feature],
    mpp: float | None,
    name: str = "annotations",
    metadata: dict[str, Any] | None = None,
    color_by_score: bool = False,
    edge_width: float | None = None,
) -> list[LayerData]:
    """Shapes layer (polygons with `is_hole` rings, paths) and/or Points layer (points) of
    QuPath features; empty list for no features. Coordinates stay level-0 pixels.
    `color_by_score`: the result style (edges by ``max_probability``, light fill, score
    text); else edges (and no fill) in each feature's class colour."""
    shapes: list[np.ndarray] = []
    kinds: list[str] = []
    rows: list[dict[str, Any]] = []
    colors: list[list[float]] = []
    points: list[np.ndarray] = []
    prow: list[dict[str, Any]] = []
    pcolors: list[list[float]] = []
    for index, f in enumerate(features, start=1):
        base = {
            "region": index,
            "class": f.classification or "",
            "id": f.id,
            "name": f.name or "",
            "object_type": f.object_type,
            **{k: float(v) for k, v in f.measurements.items()},
        }
        color = f.color or KNOWN_COLORS.get(f.classification or "")
        g = f.geometry
        kind, coords = g["type"], g["coordinates"]
        polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
        for poly in polys:
            for k, ring in enumerate(poly):
                shapes.append(level0_to_data(_open_ring(ring)))
                kinds.append("polygon")
                rows.append({**base, "is_hole": k > 0})
                colors.append(_rgba(color))
        lines = [coords] if kind == "LineString" else coords if kind == "MultiLineString" else []
        for line in lines:
            shapes.append(level0_to_data(np.asarray(line, dtype=float)[:, :2]))
            kinds.append("path")
            rows.append({**base, "is_hole": False})
            colors.append(_rgba(color))
        pts = [coords] if kind == "Point" else coords if kind == "MultiPoint" else []
        for p in pts:
            points.append(level0_to_data(np.asarray([p], dtype=float)[:, :2])[0])
            prow.append(base)
            pcolors.append(_rgba(color))
    meta = {"kind": KIND_ANNOTATIONS, "slide_mpp": mpp, "edge_px": EDGE_PX,
            **(metadata or {})}
    out: list[LayerData] = []
    if shapes:
        if color_by_score:
            _add_score_text(rows)
        table = _table(rows)
        kwargs: dict[str, Any] = {
            "name": name,
            "shape_type": kinds,
            "features": table,
            "feature_defaults": _defaults(table),
            "face_color": "transparent",
            "edge_width": edge_width or _edge_width(shapes),
            "metadata": meta,
            "opacity": 1.0,
            **placement(mpp),
        }
        if color_by_score and "max_probability" in table:
            kwargs.update(_score_style(table, kinds))
        else:
            kwargs["edge_color"] = np.asarray(colors)
        out.append((shapes, kwargs, "shapes"))
    if points:
        table = _table(prow)
        out.append((
            np.asarray(points),
            {
                "name": name if not shapes else f"{name} points",
                "features": table,
                "feature_defaults": _defaults(table),
                "face_color": np.asarray(pcolors),
                "border_color": "white",
                "size": _point_size(mpp),
                "canvas_size_limits": POINT_SCREEN_PX,
                "metadata": meta,
                **placement(mpp),
            },
            "points",
        ))
    return out


def score_colormap() -> Any:
    """The edge/fill colormap of results (napari Colormap, 0-1)."""
    from napari.utils.colormaps import Colormap

    controls = [c for c, _ in SCORE_COLORS]
    colors = [_hex_rgba(h) for _, h in SCORE_COLORS]
    return Colormap(colors=colors, controls=controls, name="wsi-detect score")


def _hex_rgba(h: str, alpha: float = 1.0) -> list[float]:
    h = h.lstrip("#")
    return [int(h[k:k + 2], 16) / 255 for k in (0, 2, 4)] + [alpha]


def _add_score_text(rows: list[dict[str, Any]]) -> None:
    """`score_text` column: "0.97" on the first outer ring of each of the best
    `MAX_LABELS` regions, "" on holes, further parts and the rest."""
    best: dict[Any, float] = {}
    for r in rows:
        p = r.get("max_probability")
        if isinstance(p, float) and math.isfinite(p):
            best.setdefault(r["region"], p)
    keep = set(sorted(best, key=lambda k: -best[k])[:MAX_LABELS])
    seen: set[Any] = set()
    for r in rows:
        rid = r["region"]
        if rid in keep and rid not in seen and not r.get("is_hole"):
            r["score_text"] = f"{best[rid]:.2f}"
            seen.add(rid)
        else:
            r["score_text"] = ""


def _score_style(table: dict[str, list[Any]], kinds: list[str]) -> dict[str, Any]:
    """Layer kwargs of the result style: edges by score, a light fill (none on holes and
    paths, which napari would otherwise fill), the score as text."""
    cmap = score_colormap()
    p = np.nan_to_num(np.asarray(table["max_probability"], dtype=float), nan=1.0)
    face = np.asarray(cmap.map(np.clip(p, 0.0, 1.0)), dtype=float).reshape(-1, 4)
    face[:, 3] = FILL_ALPHA
    holes = np.asarray(table.get("is_hole", [False] * len(p)), dtype=bool)
    face[holes | (np.asarray(kinds) != "polygon")] = 0.0
    return {
        "edge_color": "max_probability",
        "edge_colormap": cmap,
        "edge_contrast_limits": (0.0, 1.0),
        "face_color": face,
        "text": {"string": "{score_text}", "size": TEXT_SIZE, "color": TEXT_COLOR,
                 "anchor": "upper_left"},
    }


def _table(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column dict with every key of every row (missing numbers = NaN, text = '')."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    table: dict[str, list[Any]] = {}
    for k in keys:
        sample = next(r[k] for r in rows if k in r)
        fill: Any = math.nan if isinstance(sample, float) else "" if isinstance(sample, str) else 0
        if isinstance(sample, bool):
            fill = False
        table[k] = [r.get(k, fill) for r in rows]
    return table


def _defaults(table: dict[str, list[Any]]) -> dict[str, Any]:
    """Values a shape drawn by hand gets: its own new region, class Tumor."""
    out: dict[str, Any] = {}
    for k, col in table.items():
        v = col[0]
        out[k] = (False if isinstance(v, (bool, np.bool_)) else -1 if k == "region"
                  else math.nan if isinstance(v, float) else "" if isinstance(v, str) else 0)
    if "class" in out:
        out["class"] = TUMOUR_CLASS[0]
    if "object_type" in out:
        out["object_type"] = "annotation"
    if "max_probability" in out:
        out["max_probability"] = 1.0  # drawn by a pathologist: certain
    return out


def _edge_width(shapes: list[np.ndarray]) -> float:
    """Edge width in level-0 px: ~1/600 of the annotated extent, so edges stay visible
    when the whole slide is on screen and thin when zoomed in."""
    allp = np.concatenate(shapes)
    extent = float(np.ptp(allp, axis=0).max()) if len(allp) else 0.0
    return max(2.0, extent / 600)


def _point_size(mpp: float | None) -> float:
    """~10 µm markers (in level-0 px), the size of a mitotic figure."""
    return 10.0 / float(mpp) if mpp else 40.0


def regions_to_layer_data(regions: Iterable[Any], mpp: float | None,
                          name: str = "metastases",
                          metadata: dict[str, Any] | None = None,
                          cell_px: float | None = None,
                          simplify: float | None = SIMPLIFY_CELLS,
                          name_prefix: str = "Metastasis") -> LayerData:
    """Shapes layer of `postprocess.regions.Region`s (may be empty) in the result style.

    Napari-free, meant for a worker thread. Regions are drawn simplified by `simplify`
    map cells (`cell_px` level-0 px per cell; default: each region's own, from its area
    and cell count; None or 0: exact); the exact rings go into the metadata for export
    (module docstring). `name_prefix` names the features ("Metastasis 3 (p=0.97)")."""
    regions = list(regions)
    exact = regions_to_features(regions, name_prefix=name_prefix)
    shown = list(exact)
    if simplify:
        shown = _simplified_features(
            exact, [simplify * (cell_px or _region_cell(r)) for r in regions])
    meta = {"kind": KIND_REGIONS, **(metadata or {})}
    layers = features_to_layers(shown, mpp, name=name, metadata=meta, color_by_score=True)
    if layers and layers[0][2] == "shapes":
        data, kwargs, kind = layers[0]
        kwargs["metadata"][EXACT_KEY] = _exact_rings(exact, shown, data,
                                                     kwargs["features"]["region"])
        return data, kwargs, kind
    table = _table([{"region": 0, "class": TUMOUR_CLASS[0], "id": "", "name": "",
                     "object_type": "annotation", "max_probability": 0.0, "area_um2": 0.0,
                     "peak_x": 0.0, "peak_y": 0.0, "centroid_x": 0.0, "centroid_y": 0.0,
                     "is_hole": False, "score_text": ""}])
    return ([], {
        "name": name, "shape_type": "polygon", "face_color": "transparent",
        "edge_color": "max_probability", "edge_colormap": score_colormap(),
        "edge_contrast_limits": (0.0, 1.0), "edge_width": 8.0,
        "features": {k: np.asarray(v)[:0].astype(object if isinstance(v[0], str)
                                                   else np.asarray(v).dtype)
                     for k, v in table.items()},
        "feature_defaults": _defaults(table),
        "text": {"string": "{score_text}", "size": TEXT_SIZE, "color": TEXT_COLOR,
                 "anchor": "upper_left"},
        "metadata": {"kind": KIND_REGIONS, "slide_mpp": mpp, "edge_px": EDGE_PX,
                     EXACT_KEY: {}, **(metadata or {})},
        **placement(mpp),
    }, "shapes")


def _region_cell(region: Any) -> float:
    """A region's map cell side in level-0 px, from its area and cell count (a region
    clipped at the slide edge gives a little less: a safe, smaller tolerance)."""
    n = getattr(region, "n_cells", 0) or 0
    area = float(region.geometry.area)
    return math.sqrt(area / n) if n > 0 and area > 0 else 0.0


def simplify_rings(rings: Sequence[np.ndarray], tolerance: Sequence[float] | float
                   ) -> list[np.ndarray]:
    """Each ring (N, 2), open or closed, with fewer vertices: Douglas-Peucker (shapely /
    GEOS, vectorised) on the ring as a line from its first vertex back to it, so every
    point of either outline lies within `tolerance` of the other. (GEOS simplifies a
    closed *ring* with a moving start point, which can exceed the tolerance: measured
    1.15x; as a line it cannot.) A ring that would collapse (< 3 vertices, zero area) or
    cross itself is kept exact. Rings are simplified independently: napari draws each as
    a shape of its own, and export uses the exact rings (module docstring)."""
    import shapely

    if not len(rings):
        return []
    tol = np.broadcast_to(np.asarray(tolerance, dtype=float), (len(rings),))
    opened = [_open_ring(r) for r in rings]
    closed = [np.vstack([r, r[:1]]) for r in opened]
    lines = shapely.linestrings(np.concatenate(closed),
                                indices=np.repeat(np.arange(len(closed)), list(map(len, closed))))
    simple = shapely.simplify(lines, tol, preserve_topology=False)
    ok = (shapely.get_num_coordinates(simple) >= 4) & shapely.is_simple(simple) & (tol > 0)
    out: list[np.ndarray] = []
    for r, line, good in zip(rings, simple, ok, strict=True):
        c = shapely.get_coordinates(line)[:-1] if good else None
        if c is None or len(c) >= len(_open_ring(r)) or _area(c) <= 0:
            out.append(r)
        else:
            out.append(c)
    return out


def _area(c: np.ndarray) -> float:
    x, y = c[:, 0], c[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _simplified_features(features: list[Feature], tolerances: list[float]) -> list[Feature]:
    """Display copies of polygon `features` with each ring simplified by its feature's
    tolerance (level-0 px); a feature left unchanged is returned as itself."""
    import dataclasses

    rings, owner = [], []
    for k, f in enumerate(features):
        for ring in _geometry_rings(f.geometry):
            rings.append(ring)
            owner.append(k)
    simple = simplify_rings(rings, [tolerances[k] for k in owner])
    out, pos = [], 0
    for f in features:
        n = sum(1 for _ in _geometry_rings(f.geometry))
        mine, pos = simple[pos:pos + n], pos + n
        if all(a is b for a, b in zip(mine, rings[pos - n:pos], strict=True)):
            out.append(f)
            continue
        it = iter(mine)
        g = f.geometry
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        coords = [[next(it).tolist() for _ in poly] for poly in polys]
        geom = {"type": g["type"], "coordinates": coords[0] if g["type"] == "Polygon"
                else coords}
        out.append(dataclasses.replace(f, geometry=geom))
    return out


def _geometry_rings(g: dict[str, Any]) -> Iterable[np.ndarray]:
    """Open rings (x, y) of a Polygon/MultiPolygon GeoJSON geometry, in order."""
    kind, coords = g["type"], g["coordinates"]
    polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    for poly in polys:
        for ring in poly:
            yield _open_ring(ring)


def _polygon_rings(f: Feature) -> list[np.ndarray]:
    """A polygon feature's rings in layer data (row, col), in `features_to_layers`'s
    order (each part's outer ring, then its holes)."""
    return [level0_to_data(ring) for ring in _geometry_rings(f.geometry)]


def rings_digest(rings: Sequence[Any]) -> str:
    """Digest of shapes' vertices as napari holds them (float32), in order."""
    h = hashlib.blake2b(digest_size=16)
    for r in rings:
        a = np.ascontiguousarray(np.asarray(r, dtype=np.float32)[:, -2:])
        h.update(np.int64(len(a)).tobytes())
        h.update(a.tobytes())
    return h.hexdigest()


def _exact_rings(exact: list[Feature], shown: list[Feature], data: list[np.ndarray],
                 region_ids: list[Any]) -> dict[int, dict[str, Any]]:
    """{region id: {"digest": of its displayed rings, "rings": its exact rings}} for the
    regions drawn simplified (the others are drawn exactly: nothing to keep)."""
    by_region: dict[int, list[int]] = {}
    for i, rid in enumerate(region_ids):
        by_region.setdefault(int(rid), []).append(i)
    out: dict[int, dict[str, Any]] = {}
    for index, (fe, fs) in enumerate(zip(exact, shown, strict=True), start=1):
        if fe is fs:
            continue
        rings = _polygon_rings(fe)
        shown_idx = by_region.get(index, [])
        if len(rings) != len(shown_idx):  # cannot happen: same parts and holes (checked)
            continue
        out[index] = {"digest": rings_digest([data[i] for i in shown_idx]), "rings": rings}
    return out
