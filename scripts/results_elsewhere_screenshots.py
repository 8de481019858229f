"""Screenshots for docs/results-elsewhere.md: a run's exports opened WITHOUT this plugin.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python \
        scripts/results_elsewhere_screenshots.py /tmp/results-elsewhere docs/images

1. `results-elsewhere-ngff.png`: napari with the slide's level 0 read by tifffile
   (scale = mpp, as any viewer puts it) and DIR/maps.ome.zarr read by ome-zarr-py, each
   map added with the scale and translation its NGFF metadata gives (the snippet in the
   docs); the labels are the metastasis regions.
2. `results-elsewhere-napari-ome-zarr.png`: the same slide and maps.ome.zarr opened by
   napari-ome-zarr (`viewer.open(..., plugin="napari-ome-zarr")`).
3. `results-elsewhere-overlay.png`: the QuPath overlay OME-TIFF (the pyramid read by
   tifffile) on the slide, at its own pixel size (µm from the resolution tags).

A phantom (seed 7, 2048 x 1536 px) and the bundled demo model make the run.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path


def make_run(work: Path) -> tuple[Path, Path]:
    from napari_wsi_detect.detectors.job import DetectionRequest, detect
    from napari_wsi_detect.phantom import write_phantom

    slide = work / "phantom.tif"
    if not slide.exists():
        write_phantom(slide, seed=7, size=(2048, 1536), mpp=0.243)
    run = work / "run"
    if not (run / "maps.ome.zarr").is_dir():
        detect(DetectionRequest("metastases", str(slide), device="cpu", out=str(run),
                                roi_cells=24))
    return slide, run


def add_slide(viewer, slide: Path, mpp: float):
    import tifffile

    level0 = tifffile.imread(slide, level=0)
    return viewer.add_image(level0, name="slide (tifffile)", rgb=True, scale=(mpp, mpp))


def probability_colormap():
    """Transparent below p = 0.2, then orange to yellow: the slide stays readable (napari's
    own colormaps are opaque at 0, which would veil the whole slide)."""
    from napari.utils.colormaps import Colormap

    return Colormap([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0.45, 0, 0.6], [1, 1, 0.2, 0.85]],
                    controls=[0, 0.2, 0.5, 1], name="probability")


def add_ngff_with_ome_zarr_py(viewer, path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nodes = list(Reader(parse_url(str(path)))())
    for node in nodes:
        if not node.data:
            continue
        scale, translate = node.metadata["coordinateTransformations"][0]
        kwargs = {"scale": scale["scale"], "translate": translate["translation"],
                  "name": node.metadata.get("name", "map")}
        if "image-label" in node.zarr.root_attrs:
            viewer.add_labels(list(node.data), opacity=0.5, **kwargs)
        else:
            viewer.add_image(list(node.data), colormap=probability_colormap(),
                             contrast_limits=(0, 1), **kwargs)


def main(work: str, images: str) -> None:
    warnings.filterwarnings("ignore", message="napari support for the PyQt5 backend")
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    work_dir, out = Path(work), Path(images)
    work_dir.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    slide, run = make_run(work_dir)
    mpp = 0.243
    from napari_wsi_detect.exports.qupath import export_qupath

    overlay, _ = export_qupath(run)

    def shoot(viewer, name: str) -> None:
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        viewer.reset_view()
        viewer.camera.center = (150.0, 240.0)  # µm (y, x): the phantom's metastasis
        viewer.camera.zoom = 2.6
        for _ in range(5):
            QApplication.processEvents()
        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.hide()
        viewer.screenshot(str(out / name), canvas_only=False)
        print(out / name)

    viewer = napari.Viewer(title="maps.ome.zarr via ome-zarr-py")
    viewer.window.resize(1400, 900)
    add_slide(viewer, slide, mpp)
    add_ngff_with_ome_zarr_py(viewer, run / "maps.ome.zarr")
    shoot(viewer, "results-elsewhere-ngff.png")
    viewer.close()

    viewer = napari.Viewer(title="maps.ome.zarr via napari-ome-zarr")
    viewer.window.resize(1400, 900)
    add_slide(viewer, slide, mpp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = viewer.open(str(run / "maps.ome.zarr"), plugin="napari-ome-zarr")
    for layer in layers:
        if layer._type_string == "image":
            layer.colormap, layer.contrast_limits = probability_colormap(), (0, 1)
        else:
            layer.opacity = 0.5
    shoot(viewer, "results-elsewhere-napari-ome-zarr.png")
    viewer.close()

    viewer = napari.Viewer(title="QuPath overlay OME-TIFF via tifffile")
    viewer.window.resize(1400, 900)
    add_slide(viewer, slide, mpp)
    with tifffile.TiffFile(overlay) as tif:
        levels = [lv.asarray() for lv in tif.series[0].levels]
        num, den = tif.pages[0].tags["XResolution"].value
    px_um = 1e4 / (num / den)
    # Overlay pixel (i, j) covers level-0 [j*s, (j+1)*s): its centre, in the slide
    # layer's pixel-centre frame, is at j*s*mpp + (s - 1)/2*mpp.
    s = px_um / mpp
    t = (s - 1) / 2 * mpp
    viewer.add_image(levels, rgb=True, name="overlay (OME-TIFF)", scale=(px_um, px_um),
                     translate=(t, t))
    shoot(viewer, "results-elsewhere-overlay.png")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
