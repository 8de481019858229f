"""npe2 reader: drag a slide onto napari, get a multiscale RGB layer in µm.

Opening is cheap (metadata + a lazy dask pyramid); nothing is computed until napari asks
for the tiles it shows. Files we do not claim (GeoJSON, CSV...) get `None` so other
readers can take them; a claimed file that cannot be opened raises `SlideOpenError`,
which napari reports as a notification without adding a layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_wsi_detect._napari.layers import LayerData, slide_layer_data

# Keep in sync with the `filename_patterns` of the reader in napari.yaml.
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu",
    ".svslide", ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg",
)  # fmt: skip

PathLike = str | os.PathLike[str]


def is_slide_path(path: PathLike) -> bool:
    return Path(path).name.lower().endswith(SLIDE_SUFFIXES) and not Path(path).is_dir()


def napari_get_reader(path: PathLike | Sequence[PathLike]) -> Callable[..., list[LayerData]] | None:
    """Return `read_slides` when every path looks like a slide, else None."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(is_slide_path(p) for p in paths):
        return None
    return read_slides


def read_slides(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """One image layer per slide; raises SlideOpenError for an unreadable file."""
    from napari_wsi_detect.slide import open_slide

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    # The Slide stays open: the layer's dask arrays read from it while it is shown.
    return [slide_layer_data(open_slide(p)) for p in paths]
