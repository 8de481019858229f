"""Results other tools can open (issue 16): the NGFF copy every run writes, read back by
the writer library's own reader (ome-zarr-py) and by napari-ome-zarr; the QuPath
overlay read by tifffile; `wsi-detect export`.

The slide is a small phantom (2048 x 1536 px at 0.243 µm/px) and the model the bundled
demo, so a run takes a few seconds on one CPU thread; a random-weight H2G-Net run checks
a task with extra maps and a mask (any task goes through the same code).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_wsi_detect.detectors.job import DetectionRequest, detect
from napari_wsi_detect.exports.ngff import NGFF_NAME, is_current, level_transforms
from napari_wsi_detect.exports.run_view import read_run

MPP = 0.243


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    from napari_wsi_detect.phantom import write_phantom

    path = tmp_path_factory.mktemp("slide") / "p.tif"
    write_phantom(path, seed=7, size=(2048, 1536), mpp=MPP)
    return path


@pytest.fixture(scope="module")
def run(slide, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    res = detect(DetectionRequest("metastases", str(slide), device="cpu", out=str(out),
                                  roi_cells=24))
    assert res.regions, "the phantom must give the demo model at least one region"
    return out


def _ome_nodes(path: Path) -> dict[str, object]:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nodes = list(Reader(parse_url(str(path)))())
    root = str(path).rstrip("/")
    return {n.zarr.path.rstrip("/")[len(root):] or "/": n for n in nodes}


def _world(node, level: int, r: float, c: float) -> tuple[float, float]:
    """µm (y, x) of pixel (r, c)'s centre on `level` from the node's own transforms."""
    scale, trans = (1.0, 1.0), (0.0, 0.0)
    for t in node.metadata["coordinateTransformations"][level]:
        if t["type"] == "scale":
            scale = t["scale"]
        elif t["type"] == "translation":
            trans = t["translation"]
    return (r * scale[0] + trans[0], c * scale[1] + trans[1])


# -- NGFF read back by ome-zarr-py ------------------------------------------------------------
def test_every_run_writes_a_current_ngff_copy(run) -> None:
    assert (run / NGFF_NAME).is_dir()
    assert is_current(run)
    attrs = json.loads((run / NGFF_NAME / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"  # QuPath/Bio-Formats, TIAToolbox
    assert not list(run.glob(".*.writing"))


def test_ome_zarr_reader_gets_the_heatmap_in_micrometres(run) -> None:
    from napari_wsi_detect.engine.heatmap import open_heatmap

    store = open_heatmap(run)
    g, heat = store.geometry, store.to_numpy()
    nodes = _ome_nodes(run / NGFF_NAME)
    image = nodes["/"]
    assert image.metadata["name"] == "metastasis heatmap"
    axes = image.metadata["axes"]
    assert [a["name"] for a in axes] == ["y", "x"]
    assert {a["unit"] for a in axes} == {"micrometer"}
    levels = [np.asarray(d) for d in image.data]
    assert levels[0].shape == g.shape == (96, 128)
    np.testing.assert_array_equal(levels[0], heat)  # NaN where not computed
    assert [lv.shape for lv in levels] == [(96, 128), (48, 64)]
    cell_um = g.cell_size0 * MPP
    for k, ts in enumerate(image.metadata["coordinateTransformations"]):
        scale = next(t["scale"] for t in ts if t["type"] == "scale")
        assert scale == pytest.approx([cell_um * 2 ** k] * 2)


def test_a_known_map_cell_lands_over_its_level0_block(run) -> None:
    """The peak cell recorded in summary.json (level-0 centre of the cell holding the
    map's maximum): read through ome-zarr-py's transforms, its centre sits on the centre
    of the level-0 block it owns, in the slide's own µm frame (pixel centres at
    index × mpp, as napari shows the slide)."""
    summary = json.loads((run / "summary.json").read_text())
    peak = summary["regions"][0]
    s = summary["geometry"]["model_stride"] // summary["geometry"]["alpha"]
    r, c = math.floor(peak["peak_y"] / s), math.floor(peak["peak_x"] / s)
    image = _ome_nodes(run / NGFF_NAME)["/"]
    heat = np.asarray(image.data[0])
    assert heat[r, c] == pytest.approx(peak["max_probability"], abs=1e-6)
    y_um, x_um = _world(image, 0, r, c)
    # level-0 pixel whose centre is at that world point
    px, py = x_um / MPP, y_um / MPP
    assert px == pytest.approx(c * s + (s - 1) / 2) and py == pytest.approx(r * s + (s - 1) / 2)
    assert c * s <= px < (c + 1) * s and r * s <= py < (r + 1) * s
    assert (px + 0.5, py + 0.5) == pytest.approx((peak["peak_x"], peak["peak_y"]))
    # a level-1 pixel is centred on the 2x2 block of cells it averages
    y1, x1 = _world(image, 1, r // 2, c // 2)
    ya, xa = _world(image, 0, 2 * (r // 2), 2 * (c // 2))
    yb, xb = _world(image, 0, 2 * (r // 2) + 1, 2 * (c // 2) + 1)
    assert (y1, x1) == pytest.approx(((ya + yb) / 2, (xa + xb) / 2))
    assert float(np.asarray(image.data[1])[r // 2, c // 2]) == pytest.approx(
        float(np.nanmean(heat[2 * (r // 2):2 * (r // 2) + 2, 2 * (c // 2):2 * (c // 2) + 2])),
        abs=1e-6)


def test_metastasis_regions_are_ngff_labels_on_the_same_grid(run) -> None:
    summary = json.loads((run / "summary.json").read_text())
    nodes = _ome_nodes(run / NGFF_NAME)
    label = nodes["/labels/metastases"]
    image = nodes["/"]
    assert label.metadata["coordinateTransformations"] == \
        image.metadata["coordinateTransformations"]
    labels = np.asarray(label.data[0])
    assert labels.dtype == np.uint8 and labels.shape == (96, 128)
    assert set(np.unique(labels)) - {0} == {r["label"] for r in summary["regions"]}
    s = summary["geometry"]["model_stride"] // summary["geometry"]["alpha"]
    for reg in summary["regions"]:
        r, c = math.floor(reg["peak_y"] / s), math.floor(reg["peak_x"] / s)
        assert labels[r, c] == reg["label"]
        # the label's area is the region's area (polygons follow cell edges)
        cell_um2 = (s * MPP) ** 2
        assert (labels == reg["label"]).sum() * cell_um2 == pytest.approx(reg["area_um2"],
                                                                          rel=0.02)
    props = json.loads((run / NGFF_NAME / "labels" / "metastases" / ".zattrs").read_text())
    props = props["image-label"]["properties"]
    assert [p["label-value"] for p in props] == [r["label"] for r in summary["regions"]]


def test_transforms_follow_the_plan_convention() -> None:
    from napari_wsi_detect.engine.plan import MapGeometry

    g = MapGeometry.for_slide((5000, 7000), 0.5, 0.25, alpha=4)  # d = 1/2: 4 px cells
    (scale0, trans0), (scale2, trans2) = level_transforms(g, 3)[0], level_transforms(g, 3)[2]
    assert scale0["scale"] == list(g.napari_scale())
    assert trans0["translation"] == list(g.napari_translate())
    assert scale2["scale"][0] == pytest.approx(4 * g.cell_size0 * 0.5)
    assert trans2["translation"][0] == pytest.approx(g.napari_translate()[0]
                                                     + 1.5 * g.cell_size0 * 0.5)


# -- napari-ome-zarr -------------------------------------------------------------------------
def test_napari_ome_zarr_reads_the_copy_without_our_plugin(run) -> None:
    pytest.importorskip("napari_ome_zarr")
    from napari_ome_zarr import napari_get_reader

    path = str(run / NGFF_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = napari_get_reader(path)
        assert reader is not None
        layers = reader(path)
    kinds = [ld[2] for ld in layers]
    assert kinds == ["image", "labels"]
    (img, img_kw, _), (lab, lab_kw, _) = layers
    assert [tuple(a.shape) for a in img] == [(96, 128), (48, 64)]
    cell_um = 16 * MPP
    assert img_kw["scale"] == pytest.approx([cell_um, cell_um])
    assert lab_kw["scale"] == pytest.approx([cell_um, cell_um])
    assert int(np.asarray(lab[0]).max()) >= 1
    # napari-ome-zarr 0.10 reads only the first transform of a dataset (the scale): the
    # (s-1)/2 level-0 px translation is dropped there (docs/results-elsewhere.md).
    assert float(np.abs(img_kw["affine"].translate).max()) <= (16 - 1) / 2 * MPP + 1e-9


# -- a task with extra maps and a mask ------------------------------------------------------------
def _h2g(path: Path) -> str:
    import torch

    from napari_wsi_detect.models.h2g import H2GNet
    from napari_wsi_detect.models.io import save_model

    torch.manual_seed(0)
    net = H2GNet(width=0.1, unet_width=2, refine_size=64, patch=32)
    return str(save_model(net, path, {"mpp": MPP, "task": "tumour"})[0])


def test_tumour_run_exports_its_refined_map_and_mask(slide, tmp_path) -> None:
    out = tmp_path / "tumour"
    res = detect(DetectionRequest("tumour", str(slide), model=_h2g(tmp_path / "m"),
                                  device="cpu", out=str(out), region=(0, 0, 512, 512),
                                  roi_cells=4, use_tissue=False, params={"threshold": 0.0}))
    nodes = _ome_nodes(out / NGFF_NAME)
    assert {"/", "/labels/tumour"} <= set(nodes)
    for name in ("refined", "tissue"):  # each extra map is an NGFF image of its own
        extra = _ome_nodes(out / NGFF_NAME / name)["/"]
        np.testing.assert_array_equal(np.asarray(extra.data[0]), res.maps[name].values)
        assert extra.metadata["coordinateTransformations"][0] == \
            level_transforms(res.maps[name].geometry, 1)[0]
    mask_grid = res.detections.extra["geometry"]
    tumour = nodes["/labels/tumour"]
    assert np.asarray(tumour.data[0]).shape == mask_grid.shape
    assert tumour.metadata["coordinateTransformations"][0] == level_transforms(mask_grid, 1)[0]
    labels = np.asarray(tumour.data[0])
    mask = np.asarray(res.detections.extra["mask"])
    np.testing.assert_array_equal(labels > 0, mask)  # the regions are the mask's contours


# -- masks of any kind ------------------------------------------------------------------------
def test_points_and_hotspot_become_labels() -> None:
    from napari_wsi_detect.detectors.base import Detections
    from napari_wsi_detect.engine.plan import MapGeometry
    from napari_wsi_detect.exports.run_view import label_masks
    from napari_wsi_detect.postprocess.mitotic_count import Hotspot

    class Point:
        def __init__(self, x: float, y: float) -> None:
            self.x, self.y = x, y

        def to_dict(self) -> dict:
            return {"x": self.x, "y": self.y, "score": 0.9}

    class Det:
        task, layer_name = "spots", "spots"

    g = MapGeometry.for_slide((800, 1000), 0.25, 0.25, alpha=1, patch=8 + 2 * 192,
                              model_stride=8)
    spot = Hotspot(x=100, y=40, w=200, h=160, count=2, area_mm2=0.002)
    masks = label_masks(Det(), Detections("points", [Point(15.0, 9.0), Point(807.0, 401.0)],
                                          0.9, extra={"hotspot": spot}), g)
    assert [m.name for m in masks] == ["spots", "spots-hotspot"]
    pts, hot = masks[0].labels, masks[1].labels
    assert pts[1, 1] == 1 and pts[50, 100] == 2 and pts.sum() == 3
    rows, cols = np.nonzero(hot)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 24, 12, 36)
    assert hot.sum() == 20 * 25


# -- atomicity ---------------------------------------------------------------------------------------
class _Kill(BaseException):
    """Stands for SIGKILL."""


@pytest.mark.parametrize("step", [1, 5, "swap", "fallback"])
def test_a_kill_while_writing_leaves_the_old_copy_or_none(run, tmp_path, monkeypatch, step):
    """Kills inside the writer's own file writes (1, 5), at the one-step swap, and
    between the two renames of systems without renameat2 ("fallback")."""
    import shutil

    from napari_wsi_detect.detectors import outdir
    from napari_wsi_detect.exports.ngff import export_ngff

    out = tmp_path / "run"
    shutil.copytree(run, out)
    final = out / NGFF_NAME
    before = sorted(str(p.relative_to(out)) for p in final.rglob("*"))
    calls = {"n": 0}
    real = os.replace, os.rename

    def counting(real_op):
        def op(src, dst, *a, **k):
            calls["n"] += 1
            if calls["n"] == step or (step == "fallback" and Path(dst) == final):
                raise _Kill
            return real_op(src, dst, *a, **k)
        return op

    def no_exchange(a, b):
        if step == "swap":
            raise _Kill
        return False

    monkeypatch.setattr(os, "replace", counting(real[0]))
    monkeypatch.setattr(os, "rename", counting(real[1]))
    if step in ("swap", "fallback"):
        monkeypatch.setattr(outdir, "_exchange", no_exchange)
    with pytest.raises(_Kill):
        export_ngff(out)
    monkeypatch.undo()
    if step == "fallback" and not final.exists():
        pass  # the old copy was set aside, the new one not yet in: none, never a half one
    else:
        assert sorted(str(p.relative_to(out)) for p in final.rglob("*")) == before
        assert _ome_nodes(final)["/"].data  # still a readable NGFF image
    export_ngff(out)  # the next export cleans the leftovers
    assert is_current(out) and not list(out.glob(f".{NGFF_NAME}.*"))


def test_a_stale_copy_is_recognised(run, slide, tmp_path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    stale = tmp_path / "stale"
    shutil.copytree(out / NGFF_NAME, stale)
    detect(DetectionRequest("metastases", str(slide), device="cpu", out=str(out),
                            roi_cells=24, params={"threshold": 0.3}))
    assert is_current(out)
    shutil.rmtree(out / NGFF_NAME)
    shutil.copytree(stale, out / NGFF_NAME)  # what a kill after the new set leaves
    assert not is_current(out)


# -- QuPath overlay --------------------------------------------------------------------------
def test_qupath_overlay_is_a_pyramidal_ome_tiff_in_micrometres(run, tmp_path) -> None:
    import tifffile

    from napari_wsi_detect.exports.qupath import export_qupath

    overlay, geojson = export_qupath(run, tmp_path / "qp" / "overlay.ome.tif")
    assert geojson == tmp_path / "qp" / "regions.geojson"
    assert geojson.read_bytes() == (run / "regions.geojson").read_bytes()
    view = read_run(run)
    heat = view.heatmap.values
    cell_um = 16 * MPP
    with tifffile.TiffFile(overlay) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert [lv.shape for lv in series.levels] == [(96, 128, 4), (48, 64, 4)]
        page = tif.pages[0]
        assert page.is_tiled and page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.extrasamples == (tifffile.EXTRASAMPLE.UNASSALPHA,)
        assert len(page.subifds) == 1
        for k, lv in enumerate(series.levels):
            p = lv.keyframe
            assert p.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            num, den = p.tags["XResolution"].value
            assert 1e4 / (num / den) == pytest.approx(cell_um * 2 ** k, rel=1e-6)
        ome = tif.ome_metadata
        assert f'PhysicalSizeX="{cell_um:g}"' in ome and 'PhysicalSizeXUnit="µm"' in ome
        rgba = series.levels[0].asarray()
    assert (rgba[~np.isfinite(heat)][:, 3] == 0).all()  # not computed: transparent
    r, c = np.unravel_index(np.nanargmax(heat), heat.shape)
    assert rgba[r, c, 3] >= 200 and rgba[r, c, 0] > rgba[r, c, 2]  # the peak: opaque, warm
    low = np.isfinite(heat) & (heat < 0.1)
    assert (rgba[low][:, 3] == 0).all()


# -- command line -------------------------------------------------------------------------------
def test_cli_export_commands(run, tmp_path, capsys) -> None:
    import shutil

    from napari_wsi_detect.cli import main

    out = tmp_path / "run"
    shutil.copytree(run, out)
    shutil.rmtree(out / NGFF_NAME)
    assert main(["export", "ngff", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / NGFF_NAME)
    assert is_current(out)
    assert main(["export", "qupath", str(out)]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == [str(out / "metastases-overlay.ome.tif"), str(out / "regions.geojson")]
    assert main(["export", "ngff", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "run folder" in err[0]
    (out / "regions.geojson").write_text("{}")  # a mixed set is refused, not exported
    assert main(["export", "qupath", str(out)]) == 2
    assert "regions.geojson" in capsys.readouterr().err
